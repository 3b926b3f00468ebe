/* storage_fixture.h - a temporary directory with a database path, for the
 * cmocka tests of the storage layer (test_server_storage.c and
 * test_server_storage_group.c). STORAGE_FIXTURE_DIR is the mkdtemp template. */
#ifndef STARLING_TEST_STORAGE_FIXTURE_H
#define STARLING_TEST_STORAGE_FIXTURE_H
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "%s", STORAGE_FIXTURE_DIR);
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/starling.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    const char *suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}
#endif
