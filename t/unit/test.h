/* Minimal unit-test harness: CHECK counts, a failure prints file:line, main prints the
 * "N passed, N failed" line that t/run.sh adds up. Also guard-page buffers: an input
 * copied so that it ends right before an unmapped page, so any over-read faults. */
#ifndef LUNASIP_TEST_H
#define LUNASIP_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int test_passed, test_failed;

#define CHECK(cond) do { \
    if (cond) test_passed++; \
    else { test_failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_MSG(cond, ...) do { \
    if (cond) test_passed++; \
    else { test_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_STR(slice, lit) CHECK_MSG((slice).len == strlen(lit) && memcmp((slice).s, (lit), (slice).len) == 0, \
    "got '%.*s' want '%s'", (int)(slice).len, (slice).s ? (slice).s : "", (lit))

#define TEST_DONE() do { \
    printf("%d passed, %d failed\n", test_passed, test_failed); \
    return test_failed ? 1 : 0; \
} while (0)

/* Returns a pointer to len bytes equal to data, placed so that data+len is the first byte
 * of a PROT_NONE page. Free with guard_free. */
struct guard_buf { char *base; size_t maplen; char *data; };

static inline struct guard_buf guard_alloc(const void *data, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + pg - 1) / pg + 1;
    struct guard_buf g;
    g.maplen = pages * pg;
    g.base = mmap(NULL, g.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.base == MAP_FAILED) { perror("mmap"); exit(2); }
    if (mprotect(g.base + (pages - 1) * pg, pg, PROT_NONE) != 0) { perror("mprotect"); exit(2); }
    g.data = g.base + (pages - 1) * pg - len;
    memcpy(g.data, data, len);
    return g;
}

static inline void guard_free(struct guard_buf *g) { munmap(g->base, g->maplen); }

/* Reads a whole file into a malloc'd buffer; exits on error. */
static inline char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

#endif
