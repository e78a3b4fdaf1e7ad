import CSystemCalls

/// How the forward pass's activations get their memory.
///
/// A layer's large activations are fresh arrays: at V3's width and 512 tokens kv_b_proj's output is
/// 64 MB, the queries 50 MB, the dense MLP's gate and up 38 MB each. glibc maps every allocation
/// above its threshold (at most 32 MB) afresh and unmaps it on free, so each such array cost a page
/// fault per 4 KB when first written: 29 ms per 64 MB here, against 2.7 ms for memory the heap
/// reuses, ~0.13 s of a 5.1 s V3 forward pass. Allocations up to 1 GiB therefore come from the heap,
/// whose freed memory the next layer's arrays of the same sizes reuse. This changes no value. It
/// costs some peak memory (the heap's free space is not always where the next array fits):
/// `validate` of the 28.5 GB V3 slice against its 8-way shard peaked at 2,318 MiB with it and 2,163
/// without, and the V3 forward benchmark took 3.25-3.31 s with it, 3.44-3.48 without. Mapping above
/// 128 MiB, or keeping only 128 MiB, gave back about half of that time and saved at most 110 MiB.
enum ActivationMemory {
    /// Set once, by the first forward pass of the process (the setting is process-wide); true if
    /// glibc took it.
    static let reused: Bool = dsconvert_retain_freed_memory(1 << 30) != 0
}
