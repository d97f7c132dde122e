"""backend/attention.py stand-in: `attention_function(q, k, v, heads, mask=None)` on projected tensors
[rows, tokens, heads*dim_head] -> [rows, tokens, heads*dim_head] (torch's scaled_dot_product_attention, scale
dim_head**-0.5). Forge binds one implementation at import (xformers / pytorch / split / sub-quadratic; on a CPU the
sub-quadratic one): they agree to float rounding, which is all a patch may rely on. `attention_pytorch` is the same function."""
import torch
import torch.nn.functional as F


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


attention_function = attention_pytorch


def get_attn_precision(attn_precision=torch.float32):
    return attn_precision
