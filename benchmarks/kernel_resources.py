"""What the fused PardAttention kernel costs a GPU per program, per tuning config, found without a GPU.

    python benchmarks/kernel_resources.py [--arch 90] [--dtype bf16] [--heads 32,8,128] [--out FILE.json]

Compiles `triton_fused.pard_attention_fused_kernel` as the TensorRT AOT plugin does (tensorrt_plugin.compile_kernel,
an explicit target: no GPU needed) for each config of the GPU tuning section (benchmarks/gpu_checks.py), and runs
`ptxas -v` on the PTX: registers per thread, spill stores/loads (bytes), shared memory per program, and how many
`cp.async` copies the PTX issues (software-pipelined loads; a pipelined merge loop adds some). It times nothing:
these are the compiler's figures, to read beside the GPU timings. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_checks import FUSED_TUNING_CONFIGS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--dtype", default="bf16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--heads", default="32,8,128", help="Hq,Hkv,D (default: Llama-3.1-8B)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    q_heads, kv_heads, head_size = (int(x) for x in args.heads.split(","))
    rows = [
        dict(config=config, **resources(config, args.dtype, q_heads, kv_heads, head_size, args.arch))
        for config in FUSED_TUNING_CONFIGS
    ]
    print(f"sm_{args.arch}, {args.dtype}, Hq {q_heads}, Hkv {kv_heads}, D {head_size}\n")
    print("| config | registers | spill stores B | spill loads B | shared B | cp.async |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config'] or 'defaults'} | {row['registers']} | {row['spill_stores']} | {row['spill_loads']} "
            f"| {row['shared']} | {row['cp_async']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def resources(config: dict, dtype: str, q_heads: int, kv_heads: int, head_size: int, arch: int) -> dict:
    """ptxas -v figures of the kernel compiled under `config` (FusedConfig fields that differ from the defaults)."""
    import dataclasses

    from triton.backends.nvidia.compiler import get_ptxas

    from plugins.pard_attention import tensorrt_plugin, triton_fused

    fused_config = dataclasses.replace(triton_fused.DEFAULT_CONFIG, **config)
    _, ptx, meta = tensorrt_plugin.compile_kernel(
        dtype, q_heads, kv_heads, head_size, target=(arch, 32), config=fused_config
    )
    suffix = "a" if arch >= 90 else ""  # sm_90a: the wgmma/TMA features Triton's sm_90 PTX uses
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_bytes(ptx)
        done = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                f"-arch=sm_{arch}{suffix}",
                str(source),
                "-o",
                str(source.with_suffix(".cubin")),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    report = done.stdout + done.stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, report)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "shared": meta["shared"],
        "cp_async": ptx.decode().count("cp.async.cg") + ptx.decode().count("cp.async.ca"),
    }


if __name__ == "__main__":
    sys.exit(main())
