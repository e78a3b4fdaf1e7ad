#define _GNU_SOURCE
#include "mapping_guard.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// A fixed table: no allocation, and the handler reads it without locks. A slot is claimed with a
// compare-and-swap on `base`; its fields are written before `ready` is published.
#define SLOTS 8192
#define PATH_BYTES 1024

struct slot {
    _Atomic(const void *) base;
    _Atomic int ready;
    long long size;
    int fd;
    char path[PATH_BYTES];
};

static struct slot slots[SLOTS];
static atomic_int installed;
// The work directory to remove: its parent, opened once when it is set, and its bare name, so the
// handler touches no shared path string and cannot be misled by a long or edited path.
static atomic_int work_parent = -1;
static char work_name[256];
static atomic_int handling;

void dsconvert_guard_set_work_directory(const char *path) {
    int old = atomic_exchange(&work_parent, -1);
    if (old >= 0) close(old);
    if (!path) return;
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path || strlen(slash + 1) >= sizeof work_name || slash - path >= PATH_MAX) return;
    char parent[PATH_MAX];
    memcpy(parent, path, (size_t)(slash - path));
    parent[slash - path] = 0;
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    strcpy(work_name, slash + 1);
    atomic_store(&work_parent, fd);
}

static void put(const char *text) {
    size_t left = strlen(text);
    while (left > 0) {
        ssize_t n = write(STDERR_FILENO, text, left);
        if (n <= 0) return;
        text += n;
        left -= (size_t)n;
    }
}

static void put_number(long long value) {
    char digits[24];
    int i = (int)sizeof digits;
    digits[--i] = 0;
    if (value == 0) digits[--i] = '0';
    while (value > 0 && i > 0) { digits[--i] = (char)('0' + value % 10); value /= 10; }
    put(digits + i);
}

// getdents64's record (the libc wrapper and opendir allocate, which a signal handler must not).
struct dirent64_record {
    uint64_t inode;
    int64_t offset;
    unsigned short length;
    unsigned char type;
    char name[];
};

// Removes `name` under `parent` and everything below it (no links followed: O_NOFOLLOW, unlinkat),
// with system calls only. Work directories are two levels deep at most; four are allowed.
static void remove_tree(int parent, const char *name, int depth) {
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { unlinkat(parent, name, 0); return; }
    char buffer[4096];
    long count;
    while ((count = syscall(SYS_getdents64, fd, buffer, sizeof buffer)) > 0) {
        for (long at = 0; at < count;) {
            struct dirent64_record *entry = (struct dirent64_record *)(buffer + at);
            at += entry->length;
            if (!strcmp(entry->name, ".") || !strcmp(entry->name, "..")) continue;
            // A directory (or an entry whose type the file system does not report) is descended into;
            // remove_tree falls back to unlinking whatever is not a directory.
            if ((entry->type == 4 /* DT_DIR */ || entry->type == 0 /* DT_UNKNOWN */) && depth < 4) remove_tree(fd, entry->name, depth + 1);
            else unlinkat(fd, entry->name, 0);
        }
    }
    close(fd);
    unlinkat(parent, name, AT_REMOVEDIR);
}

static void remove_work_directory(void) {
    int parent = atomic_load(&work_parent);
    if (parent < 0) return;
    // Other threads run on while this one handles the signal: a background writer may still finish
    // a shard and append to the journal. Repeat until the directory is gone (50 ms at most).
    struct stat gone;
    for (int attempt = 0; attempt < 50 && fstatat(parent, work_name, &gone, AT_SYMLINK_NOFOLLOW) == 0; attempt++) {
        remove_tree(parent, work_name, 0);
        struct timespec pause_for = {0, 1000000};
        nanosleep(&pause_for, NULL);
    }
}

static void on_sigbus(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    // One thread reports and cleans up; any other thread faulting meanwhile waits for its _exit.
    if (atomic_exchange(&handling, 1)) { for (;;) pause(); }
    const char *address = (const char *)info->si_addr;
    for (int i = 0; i < SLOTS; i++) {
        const char *base = atomic_load(&slots[i].base);
        if (!base || !atomic_load(&slots[i].ready)) continue;
        struct stat now;
        // The mapping the fault is in, when that file shrank (a fault elsewhere is not ours to explain).
        int inside = address >= base && address < base + slots[i].size;
        if (!inside || fstat(slots[i].fd, &now) != 0 || now.st_size >= slots[i].size) continue;
        put("dsconvert: error: ");
        put(slots[i].path);
        put(": the file changed while it was being read (");
        put_number(slots[i].size);
        put(" bytes when opened, ");
        put_number((long long)now.st_size);
        put(" now); nothing was written to the output\n");
        remove_work_directory();
        _exit(1);
    }
    // Not one of our mappings: the default action, as if no handler were installed.
    atomic_store(&handling, 0);
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

void dsconvert_guard_install(void) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&installed, &expected, 1)) return;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, NULL);
}

void dsconvert_guard_watch(const void *base, long long size, int fd, const char *path) {
    if (!base) return;
    for (int i = 0; i < SLOTS; i++) {
        const void *empty = NULL;
        if (atomic_compare_exchange_strong(&slots[i].base, &empty, base)) {
            slots[i].size = size;
            slots[i].fd = fd;
            strncpy(slots[i].path, path, PATH_BYTES - 1);
            slots[i].path[PATH_BYTES - 1] = 0;
            atomic_store(&slots[i].ready, 1);
            return;
        }
    }
}

void dsconvert_guard_unwatch(const void *base) {
    if (!base) return;
    for (int i = 0; i < SLOTS; i++) {
        if (atomic_load(&slots[i].base) == base) {
            atomic_store(&slots[i].ready, 0);
            atomic_store(&slots[i].base, NULL);
            return;
        }
    }
}
