/*
 * A C client of /dev/sgx_vepc for the shim's surface test (tests/surface.rs): one
 * function per row of vepc::driver::surface's table. Each prints NAME=ANSWER lines,
 * ANSWER being a number, "ok", or the errno's name; the test holds them to the table
 * and, where the kernel answers for /dev/null exactly as for the device, to the
 * kernel.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEV "/dev/sgx_vepc"
#define REMOVE_ALL 0xa404
#define PAGE 4096L

static const char *ename(int e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case EFBIG: return "EFBIG";
    case ESPIPE: return "ESPIPE";
    case EOVERFLOW: return "EOVERFLOW";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "E?";
    }
}

/* A call returning -1 and errno on failure. */
static void show(const char *name, long r)
{
    if (r < 0)
        printf("%s=%s\n", name, ename(errno));
    else
        printf("%s=%ld\n", name, r);
    fflush(stdout);
}

/* A call returning the error number (posix_fallocate). */
static void show_err(const char *name, int e)
{
    if (e)
        printf("%s=%s\n", name, ename(e));
    else
        printf("%s=0\n", name);
}

/* mmap: "ok" or the errno; unmaps what it mapped. */
static void show_map(const char *name, void *p, size_t len)
{
    if (p == MAP_FAILED) {
        printf("%s=%s\n", name, ename(errno));
    } else {
        printf("%s=ok\n", name);
        munmap(p, len);
    }
}

static int open_dev(int flags) { return open(DEV, flags); }

static char *map_rw(int fd, long pages)
{
    char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(3);
    }
    return p;
}

static void remove_all(const char *name, int fd) { show(name, ioctl(fd, REMOVE_ALL, 0)); }

/* open: the VFS's answers, the number the kernel would give, the spellings. */
static void row_open(void)
{
    int probe = open("/dev/null", O_RDONLY);
    close(probe);
    int fd = open_dev(O_RDWR);
    printf("lowest=%s\n", fd == probe ? "yes" : "no");
    show("excl", open_dev(O_RDWR | O_CREAT | O_EXCL));
    show("directory", open_dev(O_RDONLY | O_DIRECTORY));
    show("tmpfile", open(DEV, O_RDWR | O_TMPFILE, 0600));
    show("slashes", open("//dev//sgx_vepc", O_RDWR) >= 0 ? 0 : -1);
    show("dotdot", open("/dev/../dev/./sgx_vepc", O_RDWR) >= 0 ? 0 : -1);
    int dir = open("/dev", O_PATH | O_DIRECTORY);
    show("openat_dir", openat(dir, "sgx_vepc", O_RDWR) >= 0 ? 0 : -1);
    if (chdir("/dev") == 0)
        show("relative", open("./sgx_vepc", O_RDWR) >= 0 ? 0 : -1);
    FILE *f = fopen(DEV, "r+");
    show("fopen", f ? 0 : -1);
    if (f) {
        struct stat st;
        show("fopen_fstat_chr", fstat(fileno(f), &st) == 0 && S_ISCHR(st.st_mode) ? 0 : -1);
        remove_all("fopen_remove_all", fileno(f));
    }
    remove_all("remove_all", fd);
}

/* O_PATH: a descriptor for the node only. */
static void row_o_path(void)
{
    int fd = open_dev(O_PATH);
    int null = open("/dev/null", O_PATH);
    show("fd", fd >= 0 ? 0 : -1);
    remove_all("ioctl", fd);
    show_map("mmap", mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0), PAGE);
    char b[8];
    show("read", read(fd, b, sizeof b));
    struct stat st;
    show("fstat_chr", fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) ? 0 : -1);
    printf("getfl=%#x null=%#x\n", fcntl(fd, F_GETFL), fcntl(null, F_GETFL));
    show("close", close(fd));
}

/* The access mode decides mmap, read and write. */
static void row_access(void)
{
    int ro = open_dev(O_RDONLY), wo = open_dev(O_WRONLY), none = open_dev(3);
    show_map("ro_read", mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ro, 0), PAGE);
    show_map("ro_write", mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0), PAGE);
    show_map("wo_write", mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, wo, 0), PAGE);
    show_map("none", mmap(NULL, PAGE, PROT_READ, MAP_SHARED, none, 0), PAGE);
    remove_all("none_ioctl", none);
}

/* fcntl: the kernel's, for the same flags as /dev/null's. */
static void row_fcntl(void)
{
    int fd = open_dev(O_RDWR | O_NONBLOCK | O_CLOEXEC);
    int null = open("/dev/null", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    printf("getfl=%#x null=%#x\n", fcntl(fd, F_GETFL), fcntl(null, F_GETFL));
    printf("getfd=%d null=%d\n", fcntl(fd, F_GETFD), fcntl(null, F_GETFD));
    fcntl(fd, F_SETFL, O_APPEND);
    fcntl(null, F_SETFL, O_APPEND);
    printf("setfl=%#x null=%#x\n", fcntl(fd, F_GETFL), fcntl(null, F_GETFL));
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    remove_all("dup_remove_all", dup);
}

/* read, write and their variants: no such operations. */
static void row_transfer(void)
{
    int rw = open_dev(O_RDWR), ro = open_dev(O_RDONLY), wo = open_dev(O_WRONLY);
    char b[16];
    struct iovec v = {b, sizeof b};
    show("read", read(rw, b, sizeof b));
    show("write", write(rw, b, sizeof b));
    show("pread", pread(rw, b, sizeof b, 0));
    show("pread_negative", pread(rw, b, sizeof b, -1));
    show("pwrite", pwrite(rw, b, sizeof b, 0));
    show("readv", readv(rw, &v, 1));
    show("writev", writev(rw, &v, 1));
    show("preadv", preadv(rw, &v, 1, 0));
    show("pwritev2", pwritev2(rw, &v, 1, 0, 0));
    volatile int too_many = 5000; /* past UIO_MAXIOV; the kernel reads no vector */
    show("readv_too_many", readv(rw, &v, too_many));
    show("ro_write", write(ro, b, sizeof b));
    show("wo_read", read(wo, b, sizeof b));
}

/* lseek, ftruncate, truncate, fallocate. */
static void row_seek(void)
{
    int fd = open_dev(O_RDWR), ro = open_dev(O_RDONLY);
    show("lseek", lseek(fd, 0, SEEK_SET));
    show("ftruncate", ftruncate(fd, 8192));
    show("ftruncate_negative", ftruncate(fd, -1));
    show("truncate", truncate(DEV, 8192));
    show("fallocate", fallocate(fd, 0, 0, 8192));
    show("fallocate_hole", fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 8192));
    show("fallocate_zero_len", fallocate(fd, 0, 0, 0));
    show("fallocate_ro", fallocate(ro, 0, 0, 8192));
    show_err("posix_fallocate", posix_fallocate(fd, 0, 8192));
}

/* fstat: the node. */
static void row_fstat(void)
{
    int fd = open_dev(O_RDWR);
    struct stat st;
    show("fstat", fstat(fd, &st));
    printf("chr=%s major=%u\n", S_ISCHR(st.st_mode) ? "yes" : "no", major(st.st_rdev));
}

/* mmap: length, offset and room. */
static void row_mmap(void)
{
    int fd = open_dev(O_RDWR);
    int rw = PROT_READ | PROT_WRITE;
    show_map("len0", mmap(NULL, 0, rw, MAP_SHARED, fd, 0), 0);
    show_map("unaligned", mmap(NULL, PAGE, rw, MAP_SHARED, fd, 100), PAGE);
    show_map("minus_page", mmap(NULL, PAGE, rw, MAP_SHARED, fd, -PAGE), PAGE);
    show_map("high", mmap(NULL, PAGE, rw, MAP_SHARED, fd, 0x7ffffffffffff000L), PAGE);
    show_map("huge", mmap(NULL, 200L << 40, rw, MAP_SHARED, fd, 0), 0);
    show_map("huge_private", mmap(NULL, 200L << 40, rw, MAP_PRIVATE, fd, 0), 0);
    char *p = map_rw(fd, 2);
    show_map("noreplace", mmap(p, PAGE, rw, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0), 0);
    /* MAP_FIXED over a mapping of the same instance: the same memory. */
    p[0] = 0x5a;
    char *q = mmap(p + PAGE, PAGE, rw, MAP_SHARED | MAP_FIXED, fd, 0);
    printf("fixed_same_memory=%s\n", q != MAP_FAILED && q[0] == 0x5a ? "yes" : "no");
    int n = 0;
    while (n < 200 && mmap(NULL, 1L << 40, rw, MAP_SHARED | MAP_NORESERVE, fd, 0) != MAP_FAILED)
        n++;
    printf("terabytes=%d\n", n);
}

/* mmap: flags. */
static void row_mmap_flags(void)
{
    int fd = open_dev(O_RDWR);
    int rw = PROT_READ | PROT_WRITE;
    show_map("validate_sync", mmap(NULL, PAGE, rw, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0), PAGE);
    show_map("shared_sync", mmap(NULL, PAGE, rw, MAP_SHARED | MAP_SYNC, fd, 0), PAGE);
    show_map("validate_noreplace",
             mmap(NULL, PAGE, rw, MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE, fd, 0), PAGE);
    show_map("hugetlb", mmap(NULL, PAGE, rw, MAP_SHARED | MAP_HUGETLB, fd, 0), PAGE);
    show_map("growsdown", mmap(NULL, PAGE, rw, MAP_SHARED | MAP_GROWSDOWN, fd, 0), PAGE);
    show_map("private", mmap(NULL, PAGE, rw, MAP_PRIVATE, fd, 0), PAGE);
    show_map("no_type", mmap(NULL, PAGE, rw, 0, fd, 0), PAGE);
}

/* MAP_POPULATE, MAP_LOCKED, mlock, mlockall: nothing faulted in. */
static void row_populate(void)
{
    int fd = open_dev(O_RDWR);
    int rw = PROT_READ | PROT_WRITE;
    char *p = mmap(NULL, 8 * PAGE, rw, MAP_SHARED | MAP_POPULATE, fd, 0);
    show("map_populate", p == MAP_FAILED ? -1 : 0);
    char *q = mmap(NULL, 8 * PAGE, rw, MAP_SHARED | MAP_LOCKED, fd, 0);
    show("map_locked", q == MAP_FAILED ? -1 : 0);
    show("mlock", mlock(p, 8 * PAGE));
    show("mlock2", mlock2(p, 8 * PAGE, MLOCK_ONFAULT));
    show("mlockall", mlockall(MCL_CURRENT | MCL_FUTURE));
    char *r = map_rw(fd, 8);
    (void)r;
    munlockall();
    /* REMOVE_ALL's log line says how many pages the instance holds. */
    remove_all("remove_all", fd);
}

/* madvise, by advice. */
static void row_madvise(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 4);
    static const struct { const char *name; int advice; } all[] = {
        {"NORMAL", MADV_NORMAL},       {"RANDOM", MADV_RANDOM},
        {"SEQUENTIAL", MADV_SEQUENTIAL}, {"WILLNEED", MADV_WILLNEED},
        {"DONTNEED", MADV_DONTNEED},   {"FREE", MADV_FREE},
        {"REMOVE", MADV_REMOVE},       {"DONTFORK", MADV_DONTFORK},
        {"DOFORK", MADV_DOFORK},       {"MERGEABLE", MADV_MERGEABLE},
        {"UNMERGEABLE", MADV_UNMERGEABLE}, {"HUGEPAGE", MADV_HUGEPAGE},
        {"NOHUGEPAGE", MADV_NOHUGEPAGE}, {"DONTDUMP", MADV_DONTDUMP},
        {"DODUMP", MADV_DODUMP},       {"WIPEONFORK", MADV_WIPEONFORK},
        {"KEEPONFORK", MADV_KEEPONFORK}, {"COLD", MADV_COLD},
        {"PAGEOUT", MADV_PAGEOUT},     {"POPULATE_READ", 22},
        {"POPULATE_WRITE", 23},        {"DONTNEED_LOCKED", 24},
        {"COLLAPSE", 25},              {"UNKNOWN", 999},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "madv.%s", all[i].name);
        show(name, madvise(p, 4 * PAGE, all[i].advice));
        snprintf(name, sizeof name, "advice.%s", all[i].name);
        printf("%s=%d\n", name, all[i].advice);
    }
    show_err("posix_dontneed", posix_madvise(p, 4 * PAGE, POSIX_MADV_DONTNEED));
    show("mprotect", mprotect(p, 4 * PAGE, PROT_READ));
    remove_all("remove_all", fd);
}

/* mremap: shrink and move, never grow. */
static void row_mremap(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 4);
    p[0] = 0x11;
    show_map("grow", mremap(p, 4 * PAGE, 8 * PAGE, MREMAP_MAYMOVE), 0);
    show_map("duplicate", mremap(p, 0, PAGE, MREMAP_MAYMOVE), 0);
    show_map("dontunmap", mremap(p, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP), 0);
    void *s = mremap(p, 4 * PAGE, 2 * PAGE, 0);
    show("shrink", s == MAP_FAILED ? -1 : 0);
    char *dst = mmap(NULL, 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *m = mremap(p, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    show("move", m == MAP_FAILED ? -1 : 0);
    if (m != MAP_FAILED) {
        printf("moved_same_memory=%s\n", m[0] == 0x11 ? "yes" : "no");
        m[PAGE] = 1; /* a first touch through the moved mapping */
    }
    remove_all("remove_all", fd);
}

/* fork: the child has no mapping (VM_DONTCOPY). */
static void row_fork(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 1);
    p[0] = 1;
    pid_t pid = fork();
    if (pid == 0) {
        volatile char c = p[0];
        (void)c;
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("child=%s\n", WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited");
    printf("parent_still=%d\n", p[0]);
}

/* Another address space's view: GUP refuses VM_IO | VM_PFNMAP. */
static void row_remote(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 1);
    p[0] = 1;
    char b[16];
    struct iovec local = {b, sizeof b}, remote = {p, sizeof b};
    show("process_vm_readv", process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
    show("process_vm_writev", process_vm_writev(getpid(), &local, 1, &remote, 1, 0));
}

static sigjmp_buf sigbus_env;
static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    (void)sig; (void)ctx;
    printf("sigbus_addr=%#lx\n", (unsigned long)si->si_addr);
    siglongjmp(sigbus_env, 1);
}

/* The shim's own descriptors are out of reach: close, dup2, close_range. */
static void row_descriptors(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 32); /* more than the 16-page EPC: exact from here */
    int kept[64], n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < 64) {
        char link[256], path[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(path, link, sizeof link - 1);
        if (l < 0)
            continue;
        link[l] = 0;
        if (strstr(link, "memfd:sgx_vepc") || strstr(link, "userfaultfd") || strstr(link, "eventfd"))
            kept[n++] = atoi(e->d_name);
    }
    if (d)
        closedir(d);
    printf("kept=%d\n", n);
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    int above = 1;
    for (int i = 0; i < n; i++) {
        above &= kept[i] >= (int)lim.rlim_cur;
        if (close(kept[i]) == 0 || errno != EBADF)
            printf("closed_kept=%d\n", kept[i]);
        if (dup2(0, kept[i]) >= 0 || errno != EBADF)
            printf("dup2_kept=%d\n", kept[i]);
    }
    printf("above_limit=%s\n", above ? "yes" : "no");
    printf("raisable=%s\n", lim.rlim_cur < lim.rlim_max ? "yes" : "no");
    /* A daemon closing everything it did not open. */
    for (int k = 3; k < (int)lim.rlim_cur; k++)
        if (k != fd)
            close(k);
    close_range(fd + 1, ~0U, 0);
    remove_all("remove_all", fd);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, NULL);
    printf("base=%#lx\n", (unsigned long)p);
    fflush(stdout);
    if (sigsetjmp(sigbus_env, 1) == 0) {
        for (long i = 0; i < 32; i++)
            p[i * PAGE] = 1;
        printf("sigbus_addr=none\n");
    }
}

/* The shim's descriptor of `kind` ("userfaultfd", "memfd:sgx_vepc"), or -1. */
static int find_kept(const char *kind)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = -1;
    while (d && (e = readdir(d))) {
        char link[256], path[300];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(path, link, sizeof link - 1);
        if (l > 0) {
            link[l] = 0;
            if (strstr(link, kind))
                found = atoi(e->d_name);
        }
    }
    if (d)
        closedir(d);
    return found;
}

/* A raw close(2) of the shim's userfaultfd, which no hook sees: the device must
 * stop the program rather than let first touches escape the model. */
static void row_lost_userfaultfd(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 32);
    int k = find_kept("userfaultfd");
    printf("found=%s\n", k >= 0 ? "yes" : "no");
    fflush(stdout);
    syscall(SYS_close, k);
    for (long i = 0; i < 4; i++)
        p[i * PAGE] = 1;
    sleep(3);
    printf("still_running\n");
}

/* A raw dup2(2) over the instance's memfd: the next ioctl finds another file. */
static void row_lost_memfd(void)
{
    int fd = open_dev(O_RDWR);
    char *p = map_rw(fd, 4);
    p[0] = 1;
    int k = find_kept("memfd:sgx_vepc");
    printf("found=%s\n", k >= 0 ? "yes" : "no");
    fflush(stdout);
    int null = open("/dev/null", O_RDWR);
    syscall(SYS_dup2, null, k);
    remove_all("remove_all", fd);
    printf("still_running\n");
}

int main(int argc, char **argv)
{
    static const struct { const char *name; void (*row)(void); } rows[] = {
        {"open", row_open},          {"o_path", row_o_path},
        {"access", row_access},      {"fcntl", row_fcntl},
        {"transfer", row_transfer},  {"seek", row_seek},
        {"fstat", row_fstat},        {"mmap", row_mmap},
        {"mmap_flags", row_mmap_flags}, {"populate", row_populate},
        {"madvise", row_madvise},    {"mremap", row_mremap},
        {"fork", row_fork},          {"remote", row_remote},
        {"descriptors", row_descriptors},
        {"lost_userfaultfd", row_lost_userfaultfd},
        {"lost_memfd", row_lost_memfd},
    };
    for (size_t i = 0; argc > 1 && i < sizeof rows / sizeof rows[0]; i++) {
        if (strcmp(argv[1], rows[i].name) == 0) {
            rows[i].row();
            return 0;
        }
    }
    fprintf(stderr, "surface: no row %s\n", argc > 1 ? argv[1] : "(none)");
    return 2;
}
