"""The op's element types as Triton names them: a leaf module that the kernel and the TensorRT plugin both import."""

TRITON_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def triton_dtype_name(dtype) -> str:
    """Triton's pointer type name for a TensorRT DataType or a torch dtype (or its name: "float16",
    "DataType.HALF", "torch.bfloat16", ...)."""
    name = str(dtype).lower().removeprefix("datatype.").removeprefix("torch.")
    name = {"half": "float16", "bf16": "bfloat16", "float": "float32"}.get(name, name)
    if name not in TRITON_DTYPES:
        raise ValueError(f"PardAttention runs in float16, bfloat16 or float32, not {dtype}")
    return TRITON_DTYPES[name]
