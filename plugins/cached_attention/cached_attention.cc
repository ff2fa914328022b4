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
constexpr int kLanes = 16;  // independent partial sums: loops vectorize without reordering a sum
constexpr int64_t kBlock = 16;  // prompt chunks: tokens per task, and keys per transposed block

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

PARD_INLINE float folded(float* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

PARD_INLINE float dot(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) lanes[l] += a[i] * b[i];
  return folded(lanes);
}

// e^x for x <= 0 (a softmax after subtracting the max), ~2 ulp: Cody-Waite reduction and a degree-6 polynomial,
// written so that the loop over scores vectorizes.
PARD_INLINE float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof two_to_n);
  return y * two_to_n;
}

// RMSNorm over one head (Qwen3's q/k norm), then the half rotation of RotaryEmbedding (non-interleaved).
PARD_INLINE void prepare_head(const float* raw, const float* norm, float epsilon, const float* cos, const float* sin,
                              int64_t dim, float scale, float* out) {
  float normed[512];
  const float* x = raw;
  if (norm) {
    float lanes[kLanes] = {};
    for (int64_t i = 0; i < dim; ++i) lanes[i % kLanes] += raw[i] * raw[i];
    const float inverse = 1.0f / std::sqrt(folded(lanes) / static_cast<float>(dim) + epsilon);
    for (int64_t i = 0; i < dim; ++i) normed[i] = raw[i] * inverse * norm[i];
    x = normed;
  }
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = (x[i] * cos[i] - x[i + half] * sin[i]) * scale;
    out[i + half] = (x[i + half] * cos[i] + x[i] * sin[i]) * scale;
  }
}

// Row `row` of the flattened (batch row, token, query head): its softmax over the visible keys times the values.
PARD_CLONES void attend(const Call& call, int64_t row, std::vector<float>& scratch) {
  const Layout& s = call.shape;
  const int64_t head = row % s.q_heads, token = (row / s.q_heads) % s.tokens, b = row / (s.q_heads * s.tokens);
  const int64_t dim = s.dim, at = b * s.tokens + token, visible = call.past_len[b] + token + 1;
  scratch.resize(2 * dim + visible);
  float *query = scratch.data(), *acc = query + dim, *weights = acc + dim;
  prepare_head(call.qkv + at * s.width() + head * dim, call.query_norm, call.epsilon, call.cos + at * dim / 2,
               call.sin + at * dim / 2, dim, call.scale, query);
  const int64_t cache = (b * s.kv_heads + head / s.group()) * s.capacity * dim;
  const float *keys = call.keys + cache, *values = call.values + cache;
  float top = -INFINITY;
  for (int64_t r = 0; r < visible; ++r) {
    weights[r] = dot(query, keys + r * dim, dim);
    top = std::max(top, weights[r]);
  }
  for (int64_t r = 0; r < visible; ++r) weights[r] = exp_nonpositive(weights[r] - top);
  float lanes[kLanes] = {};
  int64_t r = 0;
  for (; r + kLanes <= visible; r += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += weights[r + l];
  for (int l = 0; r < visible; ++r, ++l) lanes[l] += weights[r];
  const float total = folded(lanes);
  std::fill(acc, acc + dim, 0.0f);
  for (r = 0; r < visible; ++r)
    for (int64_t i = 0; i < dim; ++i) acc[i] += weights[r] * values[r * dim + i];
  float* out = call.out + at * s.q_heads * dim + head * dim;
  for (int64_t i = 0; i < dim; ++i) out[i] = acc[i] / total;
}

void attend_task(void* call, size_t row) {
  thread_local std::vector<float> scratch;
  attend(*static_cast<const Call*>(call), static_cast<int64_t>(row), scratch);
}

// Prompt chunks: kBlock tokens of one head per task. Each block of kBlock keys is transposed once and serves all the
// task's tokens, whose scores then come 16 at a time without horizontal sums; the values are read once per key for
// all of them. (Another summation order than attend's: prompt tokens only ever go through prefill calls.)
PARD_CLONES void attend_chunk(const Call& call, int64_t task, std::vector<float>& scratch) {
  const Layout& s = call.shape;
  const int64_t blocks = (s.tokens + kBlock - 1) / kBlock, dim = s.dim;
  const int64_t block = task % blocks, head = (task / blocks) % s.q_heads, b = task / (blocks * s.q_heads);
  const int64_t first = block * kBlock, rows = std::min(kBlock, s.tokens - first);
  const int64_t past = call.past_len[b], keys_seen = past + first + rows;
  scratch.resize(rows * dim * 2 + dim * kBlock + rows * keys_seen);
  float *queries = scratch.data(), *acc = queries + rows * dim, *block_t = acc + rows * dim;
  float* weights = block_t + dim * kBlock;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t at = b * s.tokens + first + i;
    prepare_head(call.qkv + at * s.width() + head * dim, call.query_norm, call.epsilon, call.cos + at * dim / 2,
                 call.sin + at * dim / 2, dim, call.scale, queries + i * dim);
  }
  const int64_t cache = (b * s.kv_heads + head / s.group()) * s.capacity * dim;
  const float *keys = call.keys + cache, *values = call.values + cache;
  for (int64_t start = 0; start < keys_seen; start += kBlock) {
    const int64_t count = std::min(kBlock, keys_seen - start);
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t l = 0; l < kBlock; ++l) block_t[d * kBlock + l] = l < count ? keys[(start + l) * dim + d] : 0.0f;
    for (int64_t i = 0; i < rows; ++i) {
      float lanes[kBlock] = {};
      const float* query = queries + i * dim;
      for (int64_t d = 0; d < dim; ++d)
        for (int64_t l = 0; l < kBlock; ++l) lanes[l] += query[d] * block_t[d * kBlock + l];
      std::memcpy(weights + i * keys_seen + start, lanes, count * sizeof(float));
    }
  }
  std::vector<float> totals(rows);
  for (int64_t i = 0; i < rows; ++i) {
    float* row = weights + i * keys_seen;
    const int64_t visible = past + first + i + 1;
    float top = -INFINITY;
    for (int64_t r = 0; r < visible; ++r) top = std::max(top, row[r]);
    for (int64_t r = 0; r < visible; ++r) row[r] = exp_nonpositive(row[r] - top);
    for (int64_t r = visible; r < keys_seen; ++r) row[r] = 0.0f;
    float lanes[kLanes] = {};
    for (int64_t r = 0; r < visible; ++r) lanes[r % kLanes] += row[r];
    totals[i] = folded(lanes);
  }
  std::fill(acc, acc + rows * dim, 0.0f);
  for (int64_t r = 0; r < keys_seen; ++r)
    for (int64_t i = 0; i < rows; ++i) {
      const float weight = weights[i * keys_seen + r];
      for (int64_t d = 0; d < dim; ++d) acc[i * dim + d] += weight * values[r * dim + d];
    }
  for (int64_t i = 0; i < rows; ++i) {
    float* out = call.out + (b * s.tokens + first + i) * s.q_heads * dim + head * dim;
    for (int64_t d = 0; d < dim; ++d) out[d] = acc[i * dim + d] / totals[i];
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
    if (kv_heads <= 0 || q_heads % kv_heads || dim % 2 || dim > 512) fail("bad head attributes");
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
    const int64_t rows = call.shape.batch * q_heads;
    if (is_prefill(context))
      context.ParallelFor(attend_chunk_task, rows * ((call.shape.tokens + kBlock - 1) / kBlock), 0, &call);
    else
      context.ParallelFor(attend_task, rows * call.shape.tokens, 0, &call);
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
  static Ort::CustomOpDomain domain{"pard.cpu"};
  static bool added = false;
  if (!added) {
    domain.Add(&op);
    added = true;
  }
  try {
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  }
  return nullptr;
}
