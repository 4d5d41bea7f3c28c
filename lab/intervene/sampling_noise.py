"""Counter-based sampling noise: a row's draw depends on its own (row seed, step) and nothing else.

A sampled token is chosen by Gumbel-max over the processed scores (logits after temperature,
top-k, top-p, ...):

    token = argmax_v  score_v + G(seed, step, v)

which draws v with probability softmax(score)_v. The noise G is a pure function of the row's
seed, the index of the token being drawn (step 0 is the first new token) and the vocabulary
index, so a row draws the same noise alone, in a static batch of 16, in a continuous batch of
hundreds or on another rank: nothing about the batch enters. It is made in two exact steps:

* an integer hash of (seed, step, v) to 32 bits, in int64 torch ops on values below 2**32 and
  multipliers below 2**31 in magnitude, so no product leaves int64's range (no overflow, no
  wrap-around, nothing left to a device's or compiler's choice). Same bits on CPU and CUDA, any
  thread count, any batch shape, eager or fused (`torch.compile` on CUDA);
* its top 23 bits k index one float32 table of Gumbel values, G[k] = -log(-log((2k+1) / 2^24)),
  built once per process (float64 on the CPU, one thread, rounded to float32) and copied to each
  device. A gather is exact, so the noise is the same float everywhere within a run; the
  table's checksum is tested, so a machine that built another table would fail that test.

23 bits bound the noise to [-2.81, 16.64]: a token more than 19.4 below the best score can
never win. Torch's own sampler (float32 uniforms) has the same resolution; the probability this
removes is below V * exp(-19.4) of the best token's (5e-4 at V = 128k, all tokens at the bound).

The hash is SplitMix-style: a per-(seed, step) key from two rounds of Wellons' `lowbias32`
finaliser, plus a Weyl sequence over the vocabulary, finalised again. Within one draw the V
inputs are distinct and the finaliser is a bijection, so no two tokens share a 32-bit value.
"""

from __future__ import annotations

import hashlib
import warnings

import torch

M32 = 0xFFFFFFFF
TABLE_BITS = 23
_GOLDEN, _TOKEN_STRIDE = 0x9E3779B9, 0x85EBCA6B
_LOWBIAS = (0x7FEB352D, 0x846CA68B)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for 0 <= x < 2**32: c is used as c - 2**32 when c >= 2**31, which is the
    same residue, so |x * c| < 2**63 and the int64 product is exact."""
    return (x * (c - (1 << 32) if c >= 1 << 31 else c)) & M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 finaliser on int64 tensors holding 32-bit values (a bijection of 32 bits)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _LOWBIAS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _LOWBIAS[1])
    return x ^ (x >> 16)


def stream_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (row seed, step): int64 tensors of equal shape."""
    seeds, steps = seeds.to(torch.int64), steps.to(torch.int64)
    return mix32((mix32(seeds & M32) + _mul32((steps + 1) & M32, _GOLDEN)) & M32)


_OFFSETS: dict[tuple[int, str], torch.Tensor] = {}
_TABLES: dict[str, torch.Tensor] = {}


def _token_offsets(vocab: int, device: torch.device) -> torch.Tensor:
    key = (vocab, str(device))
    if key not in _OFFSETS:
        _OFFSETS[key] = _mul32(torch.arange(1, vocab + 1, dtype=torch.int64), _TOKEN_STRIDE).to(device)
    return _OFFSETS[key]


def _build_table() -> torch.Tensor:
    # one thread: every element goes through the same (vectorised) log, none through a scalar tail
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        u = (torch.arange(1 << TABLE_BITS, dtype=torch.float64) * 2 + 1) / (1 << (TABLE_BITS + 1))
        return (-torch.log(-torch.log(u))).to(torch.float32)
    finally:
        torch.set_num_threads(threads)


def gumbel_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 Gumbel values indexed by the hash's top 23 bits (one copy per device)."""
    device = torch.device(device)
    if "cpu" not in _TABLES:
        _TABLES["cpu"] = _build_table()
    if str(device) not in _TABLES:
        _TABLES[str(device)] = _TABLES["cpu"].to(device)
    return _TABLES[str(device)]


def table_checksum() -> str:
    return hashlib.sha256(gumbel_table("cpu").numpy().tobytes()).hexdigest()


def _bits(keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return mix32((keys.view(-1, 1) + offsets) & M32)


def uniform_bits(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab) int64: the 32-bit hash of (seed, step, v) for every row and token."""
    return _bits(stream_keys(seeds, steps), _token_offsets(vocab, seeds.device))


def gumbel(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab) float32 Gumbel noise for rows with these seeds drawing their `steps`-th token."""
    return gumbel_table(seeds.device)[uniform_bits(seeds, steps, vocab) >> (32 - TABLE_BITS)]


def _pick(scores: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, offsets: torch.Tensor,
          table: torch.Tensor) -> torch.Tensor:
    """argmax(scores + noise): tensors only, so `torch.compile` sees one pure function."""
    noise = table[_bits(stream_keys(seeds, steps), offsets) >> (32 - TABLE_BITS)]
    return (scores.float() + noise).argmax(-1)


_FUSED: dict[str, object] = {}
FUSE_ON_CUDA = True  # one Triton kernel instead of ~16 passes over (rows, vocab); same bits (integer ops, a gather, one add)


def _fused_pick():
    if "pick" not in _FUSED:
        try:
            _FUSED["pick"] = torch.compile(_pick, dynamic=True)  # one kernel for every row count
        except Exception as exc:  # no compiler on this machine: the eager ops give the same tokens, slower
            warnings.warn(f"sampling noise runs unfused ({type(exc).__name__}: {exc})")
            _FUSED["pick"] = None
    return _FUSED["pick"]


def pick(scores: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from softmax(scores) by Gumbel-max with the rows' own noise.

    `scores`: (rows, vocab) processed logits (-inf where filtered); `seeds`, `steps`: (rows,) int64.
    """
    args = (scores, seeds, steps, _token_offsets(scores.shape[-1], scores.device), gumbel_table(scores.device))
    if scores.is_cuda and FUSE_ON_CUDA:
        fused = _fused_pick()
        if fused is not None:
            try:
                return fused(*args)
            except Exception as exc:  # e.g. Triton missing at first call: fall back for good
                warnings.warn(f"sampling noise runs unfused ({type(exc).__name__}: {exc})")
                _FUSED["pick"] = None
    return _pick(*args)


def margins(scores: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(rows,) top-1 minus top-2 of scores + noise: how far each draw is from changing its token."""
    top = torch.topk(scores.float() + gumbel(seeds, steps, scores.shape[-1]), 2, dim=-1).values
    return top[:, 0] - top[:, 1]
