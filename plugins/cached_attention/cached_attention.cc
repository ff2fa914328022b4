// pard.cpu::CachedAttention: one decoder layer's attention over preallocated KV buffers, for ONNX Runtime's CPU
// execution provider (the inplace flavour's native kernel; contract in plugins/cached_attention/__init__.py).
//
// Outside prompt chunks every query row (batch row, token, head) is computed by the same code in the same order
// whatever else the call holds, so a token's output cannot depend on how many tokens came with it: decode, verify,
// draft and batched calls agree bit for bit, which keeps greedy PARD identical to the target alone. Prompt chunks
// (the prefill input true) take a blocked path, faster for many tokens.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PARD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PARD_CLONES
#endif
#define PARD_INLINE inline __attribute__((always_inline))

namespace {

enum Input { kQkv, kCos, kSin, kKeyCache, kValueCache, kPastLen, kQueryNorm, kKeyNorm, kPrefill, kInputs };
enum Output { kOut, kKeyCacheOut, kValueCacheOut, kOutputs };
constexpr int kLanes = 16;       // floats per Vec
constexpr int64_t kMaxDim = 512;  // head sizes up to this, in multiples of kLanes
constexpr int64_t kChunkTokens = 32;  // prompt chunks: tokens per task (all heads of a KV head's group)

// 16 floats, loaded and stored unaligned; GCC lowers it to one zmm, two ymm or four xmm per clone.
typedef float Vec __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t Ints __attribute__((vector_size(64), aligned(4), may_alias));

struct Layout {
  int64_t batch, tokens, q_heads, kv_heads, dim, capacity;
  int64_t width() const { return (q_heads + 2 * kv_heads) * dim; }  // one token's q, k and v heads
  int64_t group() const { return q_heads / kv_heads; }
};

struct Call {
  Layout shape;
  const float *qkv, *cos, *sin, *query_norm, *key_norm;
  const int32_t* past_len;
  float *keys, *values, *out;
  float scale, epsilon;
};

PARD_INLINE Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
PARD_INLINE void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
PARD_INLINE Vec splat(float x) { return Vec{} + x; }

PARD_INLINE float folded(float* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

PARD_INLINE float total_of(Vec v) {  // the lanes summed in a fixed order
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof v);
  return folded(lanes);
}

// total_of for 16 Vecs at once: lane i of the result is the total of a[kTotalsOrder[i]], summed by the same tree
// (lanes 8 apart, then 4, 2, 1), so a key's score is the same whichever way it was summed.
constexpr int kTotalsOrder[kLanes] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

PARD_INLINE Vec totals_of(const Vec* a) {
  Vec b[8], c[4], d[2];
  for (int j = 0; j < 8; ++j)
    b[j] = __builtin_shufflevector(a[j], a[j + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[j], a[j + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int j = 0; j < 4; ++j)
    c[j] = __builtin_shufflevector(b[j], b[j + 4], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(b[j], b[j + 4], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int j = 0; j < 2; ++j)
    d[j] = __builtin_shufflevector(c[j], c[j + 2], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(c[j], c[j + 2], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

PARD_INLINE float max_of(Vec v) {
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof v);
  float top = lanes[0];
  for (int l = 1; l < kLanes; ++l) top = std::max(top, lanes[l]);
  return top;
}

// e^x for x <= 0 (a softmax after subtracting the max), ~2 ulp: Cody-Waite reduction and a degree-6 polynomial,
// 16 lanes at a time. Lanes below -87 give e^-87 (callers zero what they mask).
PARD_INLINE Vec exp_nonpositive(Vec x) {
  const Vec low = splat(-87.0f);
  x = x < low ? low : x;
  const Vec y = x * 1.44269504088896341f + 0.5f;
  Vec n = __builtin_convertvector(__builtin_convertvector(y, Ints), Vec);  // toward zero ...
  n = n > y ? n - 1.0f : n;                                                 // ... then down: floor(y)
  Vec r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec e = p * r * r + r + 1.0f;
  const Ints bits = (__builtin_convertvector(n, Ints) + 127) << 23;
  return e * reinterpret_cast<const Vec&>(bits);
}

// RMSNorm over one head (Qwen3's q/k norm), then the half rotation of RotaryEmbedding (non-interleaved), times scale.
PARD_INLINE void prepare_head(const float* raw, const float* norm, float epsilon, const float* cos, const float* sin,
                              int64_t dim, float scale, float* out) {
  float normed[kMaxDim];
  const float* x = raw;
  if (norm) {
    Vec squares{};
    for (int64_t i = 0; i < dim; i += kLanes) squares += load(raw + i) * load(raw + i);
    const float inverse = 1.0f / std::sqrt(total_of(squares) / static_cast<float>(dim) + epsilon);
    for (int64_t i = 0; i < dim; ++i) normed[i] = raw[i] * inverse * norm[i];
    x = normed;
  }
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = (x[i] * cos[i] - x[i + half] * sin[i]) * scale;
    out[i + half] = (x[i + half] * cos[i] + x[i] * sin[i]) * scale;
  }
}

// Step calls: row `row` of the flattened (batch row, token, query head) alone. Each key's score is its own sum over
// the head in a fixed order (keys go 16 at a time only to share the last additions' shuffles), so a row's numbers
// cannot depend on the rest of the call.
PARD_CLONES void attend(const Call& call, int64_t row, std::vector<float>& scratch) {
  const Layout& s = call.shape;
  const int64_t head = row % s.q_heads, token = (row / s.q_heads) % s.tokens, b = row / (s.q_heads * s.tokens);
  const int64_t dim = s.dim, vectors = dim / kLanes, at = b * s.tokens + token;
  const int64_t visible = call.past_len[b] + token + 1;
  scratch.resize(visible + kLanes);
  float* weights = scratch.data();
  alignas(64) float query[kMaxDim];
  prepare_head(call.qkv + at * s.width() + head * dim, call.query_norm, call.epsilon, call.cos + at * dim / 2,
               call.sin + at * dim / 2, dim, call.scale, query);
  const int64_t cache = (b * s.kv_heads + head / s.group()) * s.capacity * dim;
  const float *keys = call.keys + cache, *values = call.values + cache;
  int64_t r = 0;
  for (; r + kLanes <= visible; r += kLanes) {  // 16 keys: their lane sums, then all their totals at once
    Vec a[kLanes] = {};
    const float* k = keys + r * dim;
    for (int64_t v = 0; v < vectors; ++v) {
      const Vec q = load(query + v * kLanes);
      for (int j = 0; j < kLanes; ++j) a[j] += q * load(k + j * dim + v * kLanes);
    }
    const Vec totals = totals_of(a);
    for (int i = 0; i < kLanes; ++i) weights[r + kTotalsOrder[i]] = totals[i];
  }
  for (; r < visible; ++r) {
    Vec a{};
    for (int64_t v = 0; v < vectors; ++v) a += load(query + v * kLanes) * load(keys + r * dim + v * kLanes);
    weights[r] = total_of(a);
  }
  float top = weights[0];
  for (r = 1; r < visible; ++r) top = std::max(top, weights[r]);
  for (r = visible; r < visible + kLanes; ++r) weights[r] = top;  // a full last Vec; e^0 lanes dropped below
  Vec sums{};
  for (r = 0; r < visible; r += kLanes) {
    Vec e = exp_nonpositive(load(weights + r) - top);
    store(weights + r, e);
  }
  for (r = 0; r + kLanes <= visible; r += kLanes) sums += load(weights + r);
  float total = total_of(sums);
  for (; r < visible; ++r) total += weights[r];
  Vec even[kMaxDim / kLanes], odd[kMaxDim / kLanes];
  for (int64_t v = 0; v < vectors; ++v) even[v] = odd[v] = Vec{};
  for (r = 0; r + 2 <= visible; r += 2) {
    const Vec w0 = splat(weights[r]), w1 = splat(weights[r + 1]);
    const float* value = values + r * dim;
    for (int64_t v = 0; v < vectors; ++v) {
      even[v] += w0 * load(value + v * kLanes);
      odd[v] += w1 * load(value + dim + v * kLanes);
    }
  }
  if (r < visible)
    for (int64_t v = 0; v < vectors; ++v) even[v] += splat(weights[r]) * load(values + r * dim + v * kLanes);
  float* out = call.out + at * s.q_heads * dim + head * dim;
  for (int64_t v = 0; v < vectors; ++v) store(out + v * kLanes, (even[v] + odd[v]) / total);
}

void attend_task(void* call, size_t row) {
  thread_local std::vector<float> scratch;
  attend(*static_cast<const Call*>(call), static_cast<int64_t>(row), scratch);
}

// a0 += sum over keys l of p0[l] * values[l], a1 likewise with p1 (V Vecs of each; a1 may be a0: then p1 == p0
// and the second sum is what is stored, the same numbers).
template <int V>
PARD_INLINE void add_weighted(const float* values, int64_t dim, int64_t count, const float* p0, const float* p1,
                              float* a0, float* a1) {
  Vec sum0[V], sum1[V];
  for (int u = 0; u < V; ++u) sum0[u] = load(a0 + u * kLanes), sum1[u] = load(a1 + u * kLanes);
  for (int64_t l = 0; l < count; ++l) {
    const Vec w0 = splat(p0[l]), w1 = splat(p1[l]);
    for (int u = 0; u < V; ++u) {
      const Vec x = load(values + l * dim + u * kLanes);
      sum0[u] += w0 * x;
      sum1[u] += w1 * x;
    }
  }
  for (int u = 0; u < V; ++u) store(a0 + u * kLanes, sum0[u]);
  for (int u = 0; u < V; ++u) store(a1 + u * kLanes, sum1[u]);
}

struct RowState {
  float top, total, limit;  // running max, running sum, the row's last visible key
};

// Prompt chunks: up to kChunkTokens tokens of every head of one KV head per task, online softmax over blocks of 16
// keys. Each block is transposed once and scored against all the task's rows 16 keys at a time (no horizontal sums);
// its values are read once for all of them. (Another summation order than attend's: a prompt's tokens go through
// prefill calls whatever the mode.)
PARD_CLONES void attend_chunk(const Call& call, int64_t task, std::vector<float>& scratch) {
  const Layout& s = call.shape;
  const int64_t blocks = (s.tokens + kChunkTokens - 1) / kChunkTokens, dim = s.dim, vectors = dim / kLanes;
  const int64_t block = task % blocks, kv = (task / blocks) % s.kv_heads, b = task / (blocks * s.kv_heads);
  const int64_t first = block * kChunkTokens, tokens = std::min(kChunkTokens, s.tokens - first);
  const int64_t group = s.group(), rows = tokens * group, past = call.past_len[b];
  scratch.resize(rows * dim * 2 + dim * kLanes + rows * kLanes);
  float *queries = scratch.data(), *acc = queries + rows * dim, *block_t = acc + rows * dim;
  float* probabilities = block_t + dim * kLanes;
  std::vector<RowState> state(rows);
  for (int64_t i = 0; i < rows; ++i) {  // row i: token i / group, head kv * group + i % group
    const int64_t at = b * s.tokens + first + i / group, head = kv * group + i % group;
    prepare_head(call.qkv + at * s.width() + head * dim, call.query_norm, call.epsilon, call.cos + at * dim / 2,
                 call.sin + at * dim / 2, dim, call.scale, queries + i * dim);
    state[i] = {-INFINITY, 0.0f, static_cast<float>(past + first + i / group)};
  }
  std::fill(acc, acc + rows * dim, 0.0f);
  const int64_t cache = (b * s.kv_heads + kv) * s.capacity * dim, keys_seen = past + first + tokens;
  const float *keys = call.keys + cache, *values = call.values + cache;
  Vec key_index{};
  for (int l = 0; l < kLanes; ++l) key_index[l] = static_cast<float>(l);
  for (int64_t start = 0; start < keys_seen; start += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, keys_seen - start);
    if (count < kLanes) std::fill(block_t, block_t + dim * kLanes, 0.0f);
    for (int64_t l = 0; l < count; ++l) {
      const float* key = keys + (start + l) * dim;
      for (int64_t d = 0; d < dim; ++d) block_t[d * kLanes + l] = key[d];
    }
    const Vec index = key_index + static_cast<float>(start);
    for (int64_t i = 0; i < rows; i += 4) {
      const float* q[4];
      for (int j = 0; j < 4; ++j) q[j] = queries + std::min(i + j, rows - 1) * dim;
      Vec a0{}, a1{}, a2{}, a3{};
      for (int64_t d = 0; d < dim; ++d) {
        const Vec column = load(block_t + d * kLanes);
        a0 += q[0][d] * column, a1 += q[1][d] * column, a2 += q[2][d] * column, a3 += q[3][d] * column;
      }
      const Vec scores[4] = {a0, a1, a2, a3};
      for (int j = 0; j < 4 && i + j < rows; ++j) {
        RowState& row = state[i + j];
        if (start > row.limit) {  // the whole block lies past this row: weight 0 (the value loop may pair it)
          store(probabilities + (i + j) * kLanes, Vec{});
          continue;
        }
        const Vec visible = index <= row.limit ? splat(1.0f) : Vec{};
        const Vec masked = visible > 0.0f ? scores[j] : splat(-INFINITY);
        const float top = max_of(masked);
        if (top > row.top) {  // a new maximum: what the row summed so far shrinks by e^(old - new)
          const float rescale = row.top == -INFINITY ? 0.0f : std::exp(row.top - top);
          row.total *= rescale;
          float* a = acc + (i + j) * dim;
          for (int64_t v = 0; v < vectors; ++v) store(a + v * kLanes, load(a + v * kLanes) * rescale);
          row.top = top;
        }
        const Vec p = exp_nonpositive(masked - row.top) * visible;
        row.total += total_of(p);
        store(probabilities + (i + j) * kLanes, p);
      }
    }
    // rows two at a time, their accumulators in registers over the block's keys; masked keys have weight 0
    for (int64_t i = 0; i < rows; i += 2) {
      const int64_t other = std::min(i + 1, rows - 1);
      if (start > state[i].limit && start > state[other].limit) continue;
      const float *p0 = probabilities + i * kLanes, *p1 = probabilities + other * kLanes;
      const float* value = values + start * dim;
      float *a0 = acc + i * dim, *a1 = acc + other * dim;
      switch (vectors) {  // head sizes 64 and 128 with their sums in registers
        case 4: add_weighted<4>(value, dim, count, p0, p1, a0, a1); break;
        case 8: add_weighted<8>(value, dim, count, p0, p1, a0, a1); break;
        default:
          for (int64_t v = 0; v < vectors; ++v) add_weighted<1>(value + v * kLanes, dim, count, p0, p1, a0 + v * kLanes, a1 + v * kLanes);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t at = b * s.tokens + first + i / group, head = kv * group + i % group;
    float* out = call.out + at * s.q_heads * dim + head * dim;
    for (int64_t v = 0; v < vectors; ++v) store(out + v * kLanes, load(acc + i * dim + v * kLanes) / state[i].total);
  }
}

void attend_chunk_task(void* call, size_t task) {
  thread_local std::vector<float> scratch;
  attend_chunk(*static_cast<const Call*>(call), static_cast<int64_t>(task), scratch);
}

// The new tokens' keys (normed, rotated) and values into rows past_len[b] .. past_len[b] + S - 1.
void write_new_rows(const Call& call) {
  const Layout& s = call.shape;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t token = 0; token < s.tokens; ++token) {
      const int64_t at = b * s.tokens + token, row = call.past_len[b] + token;
      const float* raw = call.qkv + at * s.width();
      for (int64_t h = 0; h < s.kv_heads; ++h) {
        const int64_t cache = ((b * s.kv_heads + h) * s.capacity + row) * s.dim;
        prepare_head(raw + (s.q_heads + h) * s.dim, call.key_norm, call.epsilon, call.cos + at * s.dim / 2,
                     call.sin + at * s.dim / 2, s.dim, 1.0f, call.keys + cache);
        std::memcpy(call.values + cache, raw + (s.q_heads + s.kv_heads + h) * s.dim, s.dim * sizeof(float));
      }
    }
}

void fail(const std::string& message) { ORT_CXX_API_THROW("CachedAttention: " + message, ORT_INVALID_ARGUMENT); }

struct Kernel {
  int64_t q_heads, kv_heads, dim;
  float scale, epsilon;

  Kernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo node(info);
    q_heads = node.GetAttribute<int64_t>("num_q_heads");
    kv_heads = node.GetAttribute<int64_t>("num_kv_heads");
    dim = node.GetAttribute<int64_t>("head_size");
    scale = node.GetAttribute<float>("scale");
    epsilon = node.GetAttribute<float>("epsilon");
    if (kv_heads <= 0 || q_heads % kv_heads || dim % kLanes || dim > kMaxDim)
      fail("num_q_heads must be a multiple of num_kv_heads, head_size a multiple of 16 up to 512");
  }

  void Compute(OrtKernelContext* raw_context) {
    Ort::KernelContext context(raw_context);
    auto qkv = context.GetInput(kQkv), key_cache = context.GetInput(kKeyCache);
    auto value_cache = context.GetInput(kValueCache), past_len = context.GetInput(kPastLen);
    const auto tokens_shape = qkv.GetTensorTypeAndShapeInfo().GetShape();
    const auto cache_shape = key_cache.GetTensorTypeAndShapeInfo().GetShape();
    Call call{};
    call.shape = {tokens_shape[0], tokens_shape[1], q_heads, kv_heads, dim, cache_shape[2]};
    check(call.shape, tokens_shape, cache_shape, past_len);
    call.qkv = qkv.GetTensorData<float>();
    call.cos = context.GetInput(kCos).GetTensorData<float>();
    call.sin = context.GetInput(kSin).GetTensorData<float>();
    call.query_norm = optional(context, kQueryNorm);
    call.key_norm = optional(context, kKeyNorm);
    call.past_len = past_len.GetTensorData<int32_t>();
    call.scale = scale;
    call.epsilon = epsilon;
    call.out = context.GetOutput(kOut, {call.shape.batch, call.shape.tokens, q_heads * dim})
                   .GetTensorMutableData<float>();
    call.keys = updated_cache(context, kKeyCacheOut, key_cache, cache_shape);
    call.values = updated_cache(context, kValueCacheOut, value_cache, cache_shape);
    write_new_rows(call);
    const int64_t blocks = (call.shape.tokens + kChunkTokens - 1) / kChunkTokens;
    if (is_prefill(context))
      context.ParallelFor(attend_chunk_task, call.shape.batch * kv_heads * blocks, 0, &call);
    else
      context.ParallelFor(attend_task, call.shape.batch * call.shape.tokens * q_heads, 0, &call);
  }

  void check(const Layout& s, const std::vector<int64_t>& tokens, const std::vector<int64_t>& cache,
             const Ort::ConstValue& past_len) const {
    if (tokens.size() != 3 || tokens[2] != s.width()) fail("qkv must be [B, S, (Hq + 2 Hkv) * D]");
    if (cache.size() != 4 || cache[0] != s.batch || cache[1] != kv_heads || cache[3] != dim)
      fail("the caches must be [B, Hkv, C, D]");
    const auto lengths = past_len.GetTensorTypeAndShapeInfo().GetShape();
    if (lengths.size() != 1 || lengths[0] != s.batch) fail("past_len must be [B]");
    const int32_t* past = past_len.GetTensorData<int32_t>();
    for (int64_t b = 0; b < s.batch; ++b)
      if (past[b] < 0 || past[b] + s.tokens > s.capacity)
        fail("row " + std::to_string(b) + ": past_len " + std::to_string(past[b]) + " + " +
             std::to_string(s.tokens) + " new tokens do not fit " + std::to_string(s.capacity) + " cache rows");
  }

  static bool is_prefill(Ort::KernelContext& context) {
    if (context.GetInputCount() <= kPrefill) return false;
    auto value = context.GetInput(kPrefill);
    return value && *value.GetTensorData<bool>();
  }

  static const float* optional(Ort::KernelContext& context, size_t index) {
    if (context.GetInputCount() <= index) return nullptr;
    auto value = context.GetInput(index);
    return value ? value.GetTensorData<float>() : nullptr;
  }

  // The output buffer is the input's own when the caller binds one OrtValue to both (ONNX Runtime's IO binding):
  // then nothing is copied. Otherwise the cache is copied over first.
  static float* updated_cache(Ort::KernelContext& context, size_t index, const Ort::ConstValue& input,
                              const std::vector<int64_t>& shape) {
    float* out = context.GetOutput(index, shape).GetTensorMutableData<float>();
    const float* in = input.GetTensorData<float>();
    if (out != in) std::memcpy(out, in, input.GetTensorTypeAndShapeInfo().GetElementCount() * sizeof(float));
    return out;
  }
};

struct CachedAttention : Ort::CustomOpBase<CachedAttention, Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new Kernel(api, info); }
  const char* GetName() const { return "CachedAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    if (index == kPastLen) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    return index == kPrefill ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= kQueryNorm ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  static CachedAttention op;
  static Ort::CustomOpDomain domain = [] {  // made once per process, added to every session's options
    Ort::CustomOpDomain made{"pard.cpu"};
    made.Add(&op);
    return made;
  }();
  try {
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  }
  return nullptr;
}
