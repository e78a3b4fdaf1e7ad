// Linux calls Swift's Glibc module does not expose (they need _GNU_SOURCE).
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

/// copy_file_range(2): copies bytes between files inside the kernel, as cp does.
static inline long dsconvert_copy_file_range(int fd_in, long long *off_in, int fd_out, long long *off_out, size_t length) {
    return syscall(SYS_copy_file_range, fd_in, off_in, fd_out, off_out, length, 0u);
}
