"""Runs sdpa_concat (SDPA on [q*scale, Qb], [k, Kb], v; scale 1) on the af3_tri shape a few times,
for `ncu --kernel-name regex:...` to profile the peer's kernel next to ours (tools/ncu_profile.sh).
Shape and layout as bench/peers.py: B 256, H 4, N 384, D 32, R 16, fp16, BSHD tensors viewed BHSD.
Written in session 17 for a profile that the device budget did not reach: not yet run.
  ncu --section SpeedOfLight --section WarpStateStats --section Occupancy -o af3_concat \
      python3 bench/probes/sdpa_concat_af3.py"""
import math
import torch
import torch.nn.functional as F

B, H, N, D, R = 256, 4, 384, 32, 16
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
qb = torch.randn(B, N, H, R, device="cuda", dtype=torch.float16, generator=g) / math.sqrt(R)
kb = torch.randn(B, N, H, R, device="cuda", dtype=torch.float16, generator=g)
scale = 1.0 / math.sqrt(D)
qc = torch.cat([q * scale, qb], dim=-1).transpose(1, 2)
kc = torch.cat([k, kb], dim=-1).transpose(1, 2)
vt = v.transpose(1, 2)
for _ in range(5):
    F.scaled_dot_product_attention(qc, kc, vt, scale=1.0)
torch.cuda.synchronize()
