// Linux calls Swift's Glibc module does not expose (they need _GNU_SOURCE).
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

/// copy_file_range(2): copies bytes between files inside the kernel, as cp does.
static inline long dsconvert_copy_file_range(int fd_in, long long *off_in, int fd_out, long long *off_out, size_t length) {
    return syscall(SYS_copy_file_range, fd_in, off_in, fd_out, off_out, length, 0u);
}

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writeback of a byte range without waiting,
/// so the closing fsync finds most of the file already on its way to the disk.
static inline int dsconvert_start_writeback(int fd, long long offset, long long length) {
    return (int)syscall(SYS_sync_file_range, fd, offset, length, 2u /* SYNC_FILE_RANGE_WRITE */);
}

#include <fcntl.h>
#include <malloc.h>

/// mallopt(3): allocations up to `bytes` come from the heap instead of fresh mappings, and up to
/// `bytes` of freed memory at the heap's top is kept for the next allocation instead of returned.
/// 1 when both settings were taken.
static inline int dsconvert_retain_freed_memory(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes) && mallopt(M_TRIM_THRESHOLD, bytes);
}

/// Opens an existing file for writing with O_DIRECT (data goes from the caller's aligned buffer to the
/// device, no page-cache copy); -1 where the file system refuses it (errno says why).
static inline int dsconvert_open_direct(const char *path) {
    return open(path, O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
}
