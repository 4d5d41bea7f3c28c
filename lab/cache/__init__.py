"""HDF5 activation cache: residual streams per layer and token, content-addressed and resumable.

A cache holds, for one (model fingerprint, prompt set, hook list, storage dtype, mode),
the activations of every real token (no padding) of every example, or, in `pooled` mode,
only the pooled per-example features. Everything downstream (directions, sweeps, pooling
comparisons, transfer, reports) reads it instead of rerunning the model.

File format (`<cache_dir>/<key[:20]>.h5`, format version 2)::

    attrs      format="emlab-activation-cache", version, key, complete, model_fingerprint,
               model_name, prompt_hash, system_prompt, hooks (JSON), storage_dtype, mode,
               d_model, n_layers, n_examples, n_tokens, attention, emlab_version
    tokens     (n_tokens,) int32     token ids, examples laid out in batch-plan order
    roles      (n_tokens,) int8      0 template glue, 1 system, 2 user, 3 assistant
    starts     (n_examples,) int64   first row of example i (examples in prompt-set order)
    lengths    (n_examples,) int64   its number of tokens
    prompt_len (n_examples,) int64   tokens up to the generation prompt; last prompt token
                                     is row starts[i] + prompt_len[i] - 1
    ids, labels, sources, meta       per-example strings (meta is JSON)
    acts/<hook>            (n_tokens, d_model)   mode "tokens"
    pooled/<hook>          (n_examples, 4, d_model) mode "pooled": last, mean_prompt,
                           mean_response, first_k; row pooled_rows[i] holds example i

Storage dtypes: float32, float16, and bfloat16 kept as its raw 16 bits in uint16 datasets
(HDF5 has no bf16 type) with `attrs["storage_dtype"] = "bfloat16"`; readers convert back.
No compression: gzip writes at ~0.03 GB/s, far below the forward pass.

Writing runs batched forwards (left padding, attention mask, real position ids), stops
after the deepest requested layer, and hands host copies to a background writer thread
through a bounded queue (memory stays flat however many tokens). Progress is committed per
batch: the file is flushed, then a sidecar JSON records the committed batch count. A killed
build resumes from there; the finished file is renamed into place atomically, so readers
never see a partial cache. Builders of one key take turns on a per-key lock file
(`<key>.h5.lock`, `lab.core.io.key_lock`): a second builder waits for the first and reuses its
file, and a killed builder's lock dies with it.

The package's modules: `format` (the key, dtypes, modes, poolings), `build` (batched
writing, resume, locking) and `read` (`ActivationCache`, `list_caches`).
"""

from lab.cache.format import (ANALYSIS_STORAGE, DEFAULT_FIRST_K, DEFAULT_STORAGE, FORMAT, MODES, POOLINGS,
                              STORAGE_DTYPES, STORED_POOLINGS, VERSION, AttentionImpl, CacheMode, CacheRequest,
                              StorageDtype, cache_key, cache_path)
from lab.cache.build import batch_plan, build_cache, pool_weights
from lab.cache.read import ActivationCache, list_caches

__all__ = ["ANALYSIS_STORAGE", "DEFAULT_FIRST_K", "DEFAULT_STORAGE", "FORMAT", "MODES", "POOLINGS", "STORAGE_DTYPES",
           "STORED_POOLINGS", "VERSION", "AttentionImpl", "CacheMode", "CacheRequest", "StorageDtype", "cache_key",
           "cache_path", "batch_plan", "build_cache", "pool_weights", "ActivationCache", "list_caches"]
