/*
 * libFuzzer target for archive_load: every input is loaded twice, once as it is and
 * once "resealed" (its length field and checksum rewritten), so mutations reach the
 * parser behind the checksum. Whatever loads must save and load again to the same bytes.
 *
 *   CC=clang cmake -S . -B build-fuzz -DLORELEY_FUZZ=ON && cmake --build build-fuzz -j2
 *   build-fuzz/fuzz_archive_blob -max_total_time=300 tests/fuzz/corpus/archive_blob
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void load_and_check(const unsigned char *blob, size_t len)
{
    archive_t *a = NULL, *b = NULL;
    archive_error err;
    if (archive_load(blob, len, &a, &err) != 0)
        return;
    unsigned char *first = NULL, *second = NULL;
    size_t first_len = 0, second_len = 0;
    if (archive_save(a, &first, &first_len, &err) != 0)
        abort();
    if (archive_load(first, first_len, &b, &err) != 0)
        abort();   /* a loaded archive must be savable and loadable */
    if (archive_save(b, &second, &second_len, &err) != 0)
        abort();
    if (first_len != second_len || memcmp(first, second, first_len) != 0)
        abort();
    /* exercise the read paths on what was loaded */
    archive_stats s;
    archive_get_stats(b, &s);
    for (size_t pos = 0; pos < archive_size(b) && pos < 64; pos++) {
        archive_elite e;
        archive_elite_at(b, pos, &e);
        archive_cell_list list = {0};
        archive_neighbours(b, e.cell, 2, ARCHIVE_NEIGHBOURS_AUTO, &list, &err);
        archive_cell_list_free(&list);
    }
    free(first);
    free(second);
    archive_free(a);
    archive_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_and_check(data, size);
    if (size >= 32) {
        unsigned char *copy = malloc(size);
        memcpy(copy, data, size);
        uint64_t total = size;
        memcpy(copy + 16, &total, 8);
        uint64_t sum = archive_checksum(copy, size - 8);
        memcpy(copy + size - 8, &sum, 8);
        load_and_check(copy, size);
        free(copy);
    }
    return 0;
}
