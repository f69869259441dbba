"""Int4 MatMulNBits weights on torchao's grid (the grid the ExecuTorch 8da4w export uses).

ONNX Runtime's quantizer maps each block's signed extreme to -8 (scale = v/-8); torchao's
symmetric int4 uses scale = max|w| / 7.5 with bf16-rounded scales, clamped to [-8, 7].
On the embedded default the ORT grid keeps 66.5% held-out `shift` accuracy (fp32
embedding) where torchao's grid keeps 97%, the same as the `.pte` (docs/verification.md).
"""
from __future__ import annotations

import numpy as np
import torch


def _weight(init, base_dir) -> np.ndarray:
    """An initializer's array; external data is read into a copy of the proto, so the
    model's own protos stay without their weights (one weight in memory at a time)."""
    import onnx
    from onnx import numpy_helper

    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    tmp = onnx.TensorProto()
    tmp.CopyFrom(init)
    return numpy_helper.to_array(tmp, base_dir=str(base_dir or ""))


def regrid_int4(fp32_model, qmodel, base_dir=None) -> int:
    """Rewrite every 4-bit MatMulNBits' packed weight and scales in `qmodel` from the fp32
    MatMul weight it replaced (in `fp32_model`, whose external data, if not loaded, is read
    one weight at a time from `base_dir`); returns how many were rewritten."""
    import onnx
    from onnx import numpy_helper

    finits = {i.name: i for i in fp32_model.graph.initializer}
    fnodes = {n.name: n for n in fp32_model.graph.node if n.op_type == "MatMul"}
    qinits = {i.name: i for i in qmodel.graph.initializer}
    done = 0
    for node in qmodel.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        src = fnodes.get(node.name.rsplit("_Q", 1)[0])
        if attrs["bits"] != 4 or src is None or src.input[1] not in finits:
            continue
        n, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        if k % block:
            continue
        w = _weight(finits[src.input[1]], base_dir).T.astype(np.float32).reshape(n, -1, block)
        scale = torch.from_numpy(np.abs(w).max(-1) / 7.5).to(torch.bfloat16).float().numpy()
        safe = np.where(scale == 0, 1.0, scale)
        q = (np.clip(np.round(w / safe[..., None]), -8, 7) + 8).astype(np.uint8)
        q = q.reshape(n, -1, block // 2, 2)
        packed = q[..., 0] | (q[..., 1] << 4)
        b, s = qinits[node.input[1]], qinits[node.input[2]]
        dtype = numpy_helper.to_array(s).dtype
        b.CopyFrom(numpy_helper.from_array(packed.reshape(tuple(b.dims)), b.name))
        s.CopyFrom(numpy_helper.from_array(scale.astype(dtype).reshape(tuple(s.dims)), s.name))
        done += 1
    return done
