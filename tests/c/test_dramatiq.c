/*
 * The Dramatiq message core (dramatiq.c) and the Redis URL parser (redis_url.c).
 * Expected JSON text comes from Python 3.11's json.dumps(value, separators=(",", ":"))
 * (ensure_ascii on, as Dramatiq's encoder), expected ids from hashlib, expected messages
 * from shared/spec/dramatiq-redis.md §2 and §6; none is produced by the code under test.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dramatiq.h"
#include "redis_url.h"

/* Encodes s as a JSON string and compares with expected (NULL: must be rejected). */
static void check_string(const char *s, size_t n, const char *expected)
{
    dq_buf b;
    dq_buf_init(&b);
    dq_buf_puts(&b, "x");   /* something before: a rejected string must leave it alone */
    size_t bad = 999;
    int rc = dq_json_string(&b, s, n, &bad);
    if (expected) {
        CHECK_EQ_INT(rc, DQ_OK);
        CHECK_STR(dq_buf_cstr(&b) + 1, expected);
    } else {
        CHECK_EQ_INT(rc, DQ_EINVAL);
        CHECK_STR(dq_buf_cstr(&b), "x");
        CHECK(bad < n);
    }
    dq_buf_free(&b);
}

static void test_json_strings(void)
{
    /* python3: json.dumps(s, separators=(",", ":")) */
    check_string("plain", 5, "\"plain\"");
    check_string("quote\" back\\ slash/", 19, "\"quote\\\" back\\\\ slash/\"");
    check_string("\b\f\n\r\t\0\x01\x1f\x7f", 9, "\"\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\\u007f\"");
    check_string("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\"\\u00e9\\u20ac\\ud83d\\ude00\"");
    check_string("\xf4\x8f\xbf\xbf\xe2\x80\xa8", 7, "\"\\udbff\\udfff\\u2028\"");
    check_string("", 0, "\"\"");
    /* Not UTF-8: rejected with the offset of the first bad byte. */
    check_string("ab\xff", 3, NULL);
    check_string("\xc0\xaf", 2, NULL);             /* overlong '/' */
    check_string("\xe0\x80\xaf", 3, NULL);         /* overlong, 3 bytes */
    check_string("\xed\xa0\x80", 3, NULL);         /* UTF-16 surrogate D800 */
    check_string("\xf4\x90\x80\x80", 4, NULL);     /* above U+10FFFF */
    check_string("\xe2\x82", 2, NULL);             /* truncated */
    check_string("a\x80z", 3, NULL);               /* lone continuation byte */
    size_t bad = 0;
    dq_buf b;
    dq_buf_init(&b);
    CHECK_EQ_INT(dq_json_string(&b, "ok\xc3\xa9\xff", 5, &bad), DQ_EINVAL);
    CHECK_EQ_INT(bad, 4);
    dq_buf_free(&b);
}

static void check_number(double v, const char *expected)
{
    dq_buf b;
    dq_buf_init(&b);
    int rc = dq_json_number(&b, v);
    if (expected) {
        CHECK_EQ_INT(rc, DQ_OK);
        CHECK_STR(dq_buf_cstr(&b), expected);
    } else {
        CHECK_EQ_INT(rc, DQ_EINVAL);
        CHECK_EQ_INT(b.len, 0);
    }
    dq_buf_free(&b);
}

static void test_json_numbers(void)
{
    /* Python's repr for non-integral floats; integral values are written as integers
     * (Lua has one number type, so 3.0 is 3). */
    check_number(0.1, "0.1");
    check_number(1.5, "1.5");
    check_number(-2.25, "-2.25");
    check_number(1e300, "1e+300");
    check_number(1e-7, "1e-07");
    check_number(123456789.125, "123456789.125");
    check_number(1.0 / 3.0, "0.3333333333333333");
    check_number(3.0, "3");
    check_number(-0.0, "0");
    check_number(42, "42");
    check_number(-9007199254740991.0, "-9007199254740991");
    check_number(1795980361031.0, "1795980361031");
    check_number(NAN, NULL);
    check_number(INFINITY, NULL);
    check_number(-INFINITY, NULL);
    check_number(0.1 + 0.2, "0.30000000000000004");   /* needs all 17 digits */
}

static void test_uuids(void)
{
    unsigned char zero[16] = {0}, ones[16];
    memset(ones, 0xff, sizeof ones);
    char u[DQ_UUID_LEN + 1];
    dq_uuid4_format(zero, u);
    CHECK_STR(u, "00000000-0000-4000-8000-000000000000");
    dq_uuid4_format(ones, u);
    CHECK_STR(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    CHECK(dq_is_uuid(u, strlen(u)));
    char a[DQ_UUID_LEN + 1], c[DQ_UUID_LEN + 1];
    CHECK_EQ_INT(dq_uuid4(a), DQ_OK);
    CHECK_EQ_INT(dq_uuid4(c), DQ_OK);
    CHECK(strcmp(a, c) != 0);
    CHECK(dq_is_uuid(a, strlen(a)));
    CHECK(a[14] == '4');
    CHECK(strchr("89ab", a[19]) != NULL);
    CHECK(!dq_is_uuid("00000000-0000-4000-8000-00000000000", 35));
    CHECK(!dq_is_uuid("00000000-0000-4000-8000-00000000000G", 36));
    CHECK(!dq_is_uuid("00000000-0000-4000-8000-00000000000A", 36));   /* upper case */
    CHECK(!dq_is_uuid("00000000_0000-4000-8000-000000000000", 36));
    /* python3: sha256(b"loreley.broker.dedupe.v1\0" + q + b"\0" + key)[:16], version 8,
     * RFC 9562 variant. */
    const char *job = "0b7e8f3c-1d2a-4c55-9e1f-2a3b4c5d6e7f";
    dq_dedupe_id("loreley.evolution", 17, job, strlen(job), u);
    CHECK_STR(u, "eec1f8f3-293f-8170-b0d4-8d698c5301fc");
    dq_dedupe_id("q", 1, "job-2", 5, u);
    CHECK_STR(u, "432a0791-128a-844c-9ebd-48dec702ffd7");
}

static void test_queue_names(void)
{
    CHECK(dq_queue_name_valid("loreley.evolution", 17));
    CHECK(dq_queue_name_valid("_q-1.x", 6));
    CHECK(!dq_queue_name_valid("", 0));
    CHECK(!dq_queue_name_valid("1queue", 6));
    CHECK(!dq_queue_name_valid("a queue", 7));
    CHECK(!dq_queue_name_valid("q:x", 3));
    CHECK(dq_queue_is_delay("q.DQ", 4));
    CHECK(!dq_queue_is_delay("q.XQ", 4));
    CHECK(dq_queue_is_dead("q.XQ", 4));
    CHECK_EQ_INT(dq_queue_canonical_len("loreley.evolution.DQ", 20), 17);
    CHECK_EQ_INT(dq_queue_canonical_len("loreley.evolution.XQ", 20), 17);
    CHECK_EQ_INT(dq_queue_canonical_len("loreley.evolution", 17), 17);
}

/* Builds a message with fixed ids and time. */
static int build(dq_buf *out, const char *queue, const char *args, const char *rid,
                 const char *mid, int64_t ts, int has_eta, int64_t eta)
{
    dq_message m;
    memset(&m, 0, sizeof m);
    m.queue_name = queue;
    m.queue_name_len = strlen(queue);
    m.actor_name = "run_evolution_job";
    m.actor_name_len = strlen(m.actor_name);
    m.args_json = args;
    m.args_json_len = strlen(args);
    m.redis_message_id = rid;
    m.message_id = mid;
    m.timestamp_ms = ts;
    m.has_eta = has_eta;
    m.eta_ms = eta;
    char err[200];
    return dq_message_build(out, &m, err, sizeof err);
}

static void test_build_spec_examples(void)
{
    dq_buf b;
    dq_buf_init(&b);
    /* §2: Python's output for run_evolution_job.send("ref-5f710385-1"), byte for byte. */
    CHECK_EQ_INT(build(&b, "loreley.evolution", "[\"ref-5f710385-1\"]",
                       "669ab6da-1737-4c29-b9ec-3351f4bfc0d1",
                       "1338987a-0391-431c-87a5-337a0217895a", 1795980323521LL, 0, 0),
                 DQ_OK);
    CHECK_STR(dq_buf_cstr(&b),
              "{\"queue_name\":\"loreley.evolution\",\"actor_name\":\"run_evolution_job\","
              "\"args\":[\"ref-5f710385-1\"],\"kwargs\":{},\"options\":{\"redis_message_id\":"
              "\"669ab6da-1737-4c29-b9ec-3351f4bfc0d1\"},\"message_id\":"
              "\"1338987a-0391-431c-87a5-337a0217895a\",\"message_timestamp\":1795980323521}");
    char err[200];
    CHECK_EQ_INT(dq_message_validate(b.data, b.len, "loreley.evolution", 17,
                                     "669ab6da-1737-4c29-b9ec-3351f4bfc0d1", 36, NULL, err,
                                     sizeof err),
                 DQ_OK);
    /* §6: a delayed message: queue_name <q>.DQ, eta after redis_message_id. */
    dq_buf_reset(&b);
    CHECK_EQ_INT(build(&b, "loreley.evolution.DQ", "[\"J\"]",
                       "5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a",
                       "7c1e2d3f-4a5b-4c6d-8e7f-8091a2b3c4d5", 1795980362031LL, 1,
                       1795980363531LL),
                 DQ_OK);
    CHECK_STR(dq_buf_cstr(&b),
              "{\"queue_name\":\"loreley.evolution.DQ\",\"actor_name\":\"run_evolution_job\","
              "\"args\":[\"J\"],\"kwargs\":{},\"options\":{\"redis_message_id\":"
              "\"5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a\",\"eta\":1795980363531},\"message_id\":"
              "\"7c1e2d3f-4a5b-4c6d-8e7f-8091a2b3c4d5\",\"message_timestamp\":1795980362031}");
    dq_message_info info;
    CHECK_EQ_INT(dq_message_validate(b.data, b.len, "loreley.evolution.DQ", 20,
                                     "5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a", 36, &info, err,
                                     sizeof err),
                 DQ_OK);
    CHECK(info.has_eta && info.eta_ms == 1795980363531LL);
    CHECK(info.timestamp_ms == 1795980362031LL);
    CHECK_STR(info.message_id, "7c1e2d3f-4a5b-4c6d-8e7f-8091a2b3c4d5");
    /* A non-ASCII actor name is escaped too. */
    dq_message m;
    memset(&m, 0, sizeof m);
    m.queue_name = "q";
    m.queue_name_len = 1;
    m.actor_name = "\xc3\xa9t\xff";   /* invalid UTF-8 */
    m.actor_name_len = 4;
    m.args_json = "[]";
    m.args_json_len = 2;
    m.redis_message_id = "5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a";
    m.message_id = "7c1e2d3f-4a5b-4c6d-8e7f-8091a2b3c4d5";
    m.timestamp_ms = 1795980362031LL;
    dq_buf_reset(&b);
    CHECK_EQ_INT(dq_message_build(&b, &m, err, sizeof err), DQ_EINVAL);
    CHECK(strstr(err, "actor_name") != NULL);
    dq_buf_free(&b);
}

#define Q "loreley.evolution"
#define RID "669ab6da-1737-4c29-b9ec-3351f4bfc0d1"
#define MID "1338987a-0391-431c-87a5-337a0217895a"
#define OPTS "\"options\":{\"redis_message_id\":\"" RID "\"}"
#define GOOD_HEAD "{\"queue_name\":\"" Q "\",\"actor_name\":\"run_evolution_job\",\"args\":[\"j\"],\"kwargs\":{},"
#define GOOD_TAIL ",\"message_id\":\"" MID "\",\"message_timestamp\":1795980323521}"

/* Expects validation (against queue Q and id RID) to fail with a message containing
 * `want`; with want NULL, to pass. */
static void check_rule(const char *json, size_t len, const char *want, int line)
{
    char err[400] = "";
    int rc = dq_message_validate(json, len, Q, strlen(Q), RID, strlen(RID), NULL, err,
                                 sizeof err);
    check_count++;
    if (want ? (rc != DQ_EINVAL || !strstr(err, want)) : rc != DQ_OK) {
        check_failures++;
        fprintf(stderr, "%s:%d: validate: rc %d, error \"%s\", wanted %s\n", __FILE__, line, rc,
                err, want ? want : "success");
    }
}
#define RULE(json, want) check_rule((json), sizeof(json) - 1, (want), __LINE__)

static void test_validate_rules(void)
{
    RULE(GOOD_HEAD OPTS GOOD_TAIL, NULL);
    /* Whitespace and another key order are valid JSON the worker accepts. */
    RULE("{ \"message_timestamp\" : 1795980323521 , \"message_id\":\"" MID "\", " OPTS
         ", \"kwargs\":{\"a\":[1,2.5e3,true,null]},\"args\":[],\"actor_name\":\"x\","
         "\"queue_name\":\"loreley.evolution\" }\n",
         NULL);
    /* Escaped forms of the same strings compare equal after decoding. */
    RULE("{\"queue_name\":\"loreley\\u002eevolution\",\"actor_name\":\"a\",\"args\":[],"
         "\"kwargs\":{}," OPTS GOOD_TAIL, NULL);

    /* §7 row 1: payload not UTF-8 / not JSON / extra key / a required key missing. */
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"" RID "\",\"x\":\"\xff\"}" GOOD_TAIL,
         "not valid UTF-8");
    RULE("{\"queue_name\":\"" Q "\",", "not valid JSON");
    RULE("", "must be a JSON object");
    RULE("[1,2]", "must be a JSON object, got an array");
    RULE("{\"queue_name\":'x'}", "not valid JSON");
    RULE(GOOD_HEAD OPTS ",\"priority\":0" GOOD_TAIL, "unexpected top-level key 'priority'");
    RULE("{\"actor_name\":\"a\",\"args\":[],\"kwargs\":{}," OPTS GOOD_TAIL,
         "missing key 'queue_name'");
    RULE("{\"queue_name\":\"" Q "\",\"args\":[],\"kwargs\":{}," OPTS GOOD_TAIL,
         "missing key 'actor_name'");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"kwargs\":{}," OPTS GOOD_TAIL,
         "missing key 'args'");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[]," OPTS GOOD_TAIL,
         "missing key 'kwargs'");
    RULE(GOOD_HEAD "\"message_id\":\"" MID "\",\"message_timestamp\":1795980323521}",
         "missing key 'options'");
    /* message_id / message_timestamp missing: accepted by a worker but unstable, and
     * not what this host sends: exactly seven keys. */
    RULE(GOOD_HEAD OPTS ",\"message_timestamp\":1795980323521}", "missing key 'message_id'");
    RULE(GOOD_HEAD OPTS ",\"message_id\":\"" MID "\"}", "missing key 'message_timestamp'");
    RULE(GOOD_HEAD OPTS ",\"args\":[]" GOOD_TAIL, "duplicate top-level key 'args'");
    /* §7: redis_message_id missing, or not the pushed id. */
    RULE(GOOD_HEAD "\"options\":{}" GOOD_TAIL, "missing options.redis_message_id");
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a\"}"
         GOOD_TAIL, "differs from the pushed id");
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":7}" GOOD_TAIL,
         "redis_message_id must be a string");
    /* §7: queue_name is not the list it is pushed on. */
    RULE("{\"queue_name\":\"loreley.other\",\"actor_name\":\"a\",\"args\":[],\"kwargs\":{},"
         OPTS GOOD_TAIL, "differs from the queue 'loreley.evolution'");
    RULE("{\"queue_name\":\"loreley.evolution.DQ\",\"actor_name\":\"a\",\"args\":[],"
         "\"kwargs\":{}," OPTS GOOD_TAIL, "differs from the queue");
    /* §7: args not an array; types of the other keys. */
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":\"abc\",\"kwargs\":{},"
         OPTS GOOD_TAIL, "args must be an array, got a string");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[],\"kwargs\":[],"
         OPTS GOOD_TAIL, "kwargs must be an object, got an array");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"\",\"args\":[],\"kwargs\":{},"
         OPTS GOOD_TAIL, "actor_name must not be empty");
    RULE("{\"queue_name\":7,\"actor_name\":\"a\",\"args\":[],\"kwargs\":{}," OPTS GOOD_TAIL,
         "queue_name must be a string, got a number");
    RULE(GOOD_HEAD "\"options\":[]" GOOD_TAIL, "options must be an object");
    /* §7: message_timestamp in seconds; not an integer. */
    RULE(GOOD_HEAD OPTS ",\"message_id\":\"" MID "\",\"message_timestamp\":1795980323}",
         "not a Unix time in milliseconds (seconds?)");
    RULE(GOOD_HEAD OPTS ",\"message_id\":\"" MID "\",\"message_timestamp\":1795980323521.5}",
         "message_timestamp must be an integer");
    RULE(GOOD_HEAD OPTS ",\"message_id\":\"" MID "\",\"message_timestamp\":\"1795980323521\"}",
         "message_timestamp must be a number, got a string");
    RULE(GOOD_HEAD OPTS ",\"message_id\":\"not-a-uuid\",\"message_timestamp\":1795980323521}",
         "message_id must be a UUID");
    /* §7: eta non-numeric, null, or not an integer. */
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"" RID "\",\"eta\":\"soon\"}" GOOD_TAIL,
         "eta must be an integer number of milliseconds, got a string");
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"" RID "\",\"eta\":null}" GOOD_TAIL,
         "eta must be an integer number of milliseconds, got null");
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"" RID "\",\"eta\":1.5e12}" GOOD_TAIL,
         "eta must be an integer");
    RULE(GOOD_HEAD "\"options\":{\"redis_message_id\":\"" RID "\",\"eta\":1795980363531,"
         "\"retries\":1}" GOOD_TAIL, NULL);
    /* JSON strictness: raw control characters, bad escapes, lone surrogates, NaN,
     * trailing data, leading zeros, depth. */
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[\"a\tb\"],\"kwargs\":{},"
         OPTS GOOD_TAIL, "raw control character");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[\"\\x\"],\"kwargs\":{},"
         OPTS GOOD_TAIL, "unknown escape");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[\"\\ud800\"],\"kwargs\":{},"
         OPTS GOOD_TAIL, "high surrogate without its low half");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[\"\\udc00\"],\"kwargs\":{},"
         OPTS GOOD_TAIL, "lone low surrogate");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[\"\\ud83d\\ude00\"],"
         "\"kwargs\":{}," OPTS GOOD_TAIL, NULL);
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[NaN],\"kwargs\":{},"
         OPTS GOOD_TAIL, "not valid JSON");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[01],\"kwargs\":{},"
         OPTS GOOD_TAIL, "not valid JSON");
    RULE("{\"queue_name\":\"" Q "\",\"actor_name\":\"a\",\"args\":[1,],\"kwargs\":{},"
         OPTS GOOD_TAIL, "not valid JSON");
    RULE(GOOD_HEAD OPTS GOOD_TAIL "x", "trailing data");
    RULE(GOOD_HEAD OPTS GOOD_TAIL "{}", "trailing data");

    /* Deep nesting: 62 levels inside args pass, 70 fail (without recursion trouble). */
    char deep[400];
    for (int depth = 62; depth <= 70; depth += 8) {
        size_t o = (size_t)snprintf(deep, sizeof deep, "{\"queue_name\":\"" Q
                                    "\",\"actor_name\":\"a\",\"args\":");
        for (int i = 0; i < depth; i++)
            deep[o++] = '[';
        for (int i = 0; i < depth; i++)
            deep[o++] = ']';
        o += (size_t)snprintf(deep + o, sizeof deep - o, ",\"kwargs\":{}," OPTS GOOD_TAIL);
        check_rule(deep, o, depth == 62 ? NULL : "nested too deeply", __LINE__);
    }
    /* Without a queue or id to compare, only the shape is checked. */
    char err[200];
    const char *other = GOOD_HEAD OPTS GOOD_TAIL;
    CHECK_EQ_INT(dq_message_validate(other, strlen(other), NULL, 0, NULL, 0, NULL, err,
                                     sizeof err),
                 DQ_OK);
}

/* ---- URLs ------------------------------------------------------------------------------ */

static void test_urls(void)
{
    redis_url u;
    char err[300], disp[400];
    CHECK_EQ_INT(redis_url_parse("redis://localhost:6380/2", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "localhost");
    CHECK_EQ_INT(u.port, 6380);
    CHECK_EQ_INT(u.db, 2);
    CHECK(!u.has_password && !u.has_username && !u.is_unix);

    CHECK_EQ_INT(redis_url_parse("redis://:p%40ss%20word@127.0.0.1:7000/0", &u, err, sizeof err), 0);
    CHECK(u.has_password && !u.has_username);
    CHECK_STR(u.password, "p@ss word");
    redis_url_display(&u, disp, sizeof disp);
    CHECK_STR(disp, "redis://127.0.0.1:7000/0");

    CHECK_EQ_INT(redis_url_parse("redis://alice:s3cret@cache.example/5?socket_timeout=2.5", &u,
                                 err, sizeof err), 0);
    CHECK(u.has_username && u.has_password);
    CHECK_STR(u.username, "alice");
    CHECK_STR(u.password, "s3cret");
    CHECK_EQ_INT(u.port, 6379);
    CHECK_EQ_INT(u.db, 5);
    CHECK_NEAR(u.socket_timeout, 2.5, 1e-12);
    redis_url_display(&u, disp, sizeof disp);
    CHECK_STR(disp, "redis://cache.example:6379/5");
    redis_url_wipe(&u);
    CHECK(!u.has_password && u.password[0] == '\0' && u.username[0] == '\0');

    CHECK_EQ_INT(redis_url_parse("redis://[::1]:6390", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "::1");
    CHECK_EQ_INT(u.port, 6390);
    CHECK_EQ_INT(u.db, 0);
    redis_url_display(&u, disp, sizeof disp);
    CHECK_STR(disp, "redis://[::1]:6390/0");

    CHECK_EQ_INT(redis_url_parse("redis://", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "localhost");
    CHECK_EQ_INT(redis_url_parse("REDIS://h?db=3&health_check_interval=10", &u, err, sizeof err), 0);
    CHECK_EQ_INT(u.db, 3);

    CHECK_EQ_INT(redis_url_parse("unix:///run/redis/redis.sock?db=4&password=x%2By", &u, err,
                                 sizeof err), 0);
    CHECK(u.is_unix);
    CHECK_STR(u.path, "/run/redis/redis.sock");
    CHECK_EQ_INT(u.db, 4);
    CHECK_STR(u.password, "x+y");
    redis_url_display(&u, disp, sizeof disp);
    CHECK_STR(disp, "unix:///run/redis/redis.sock?db=4");
    CHECK_EQ_INT(redis_url_parse("unix://:pw@/tmp/r.sock", &u, err, sizeof err), 0);
    CHECK_STR(u.path, "/tmp/r.sock");
    CHECK_STR(u.password, "pw");

    /* Errors name the problem and never show the password. */
    CHECK_EQ_INT(redis_url_parse("rediss://:topsecret@h:6379/0", &u, err, sizeof err), -1);
    CHECK(strstr(err, "TLS") && strstr(err, "not supported by this build"));
    CHECK(!strstr(err, "topsecret"));
    CHECK_EQ_INT(redis_url_parse("http://h/", &u, err, sizeof err), -1);
    CHECK(strstr(err, "unsupported URL scheme 'http'"));
    CHECK_EQ_INT(redis_url_parse("localhost:6379", &u, err, sizeof err), -1);
    CHECK(strstr(err, "not a Redis URL"));
    CHECK_EQ_INT(redis_url_parse("redis://:topsecret@h:port/0", &u, err, sizeof err), -1);
    CHECK(strstr(err, "port 'port'") && !strstr(err, "topsecret"));
    CHECK_EQ_INT(redis_url_parse("redis://h:70000/0", &u, err, sizeof err), -1);
    CHECK(strstr(err, "1..65535"));
    CHECK_EQ_INT(redis_url_parse("redis://h:6379/zero", &u, err, sizeof err), -1);
    CHECK(strstr(err, "not a database number"));
    CHECK_EQ_INT(redis_url_parse("redis://:top%zzsecret@h/0", &u, err, sizeof err), -1);
    CHECK(strstr(err, "password") && strstr(err, "percent") && !strstr(err, "secret"));
    CHECK_EQ_INT(redis_url_parse("redis://h/0?ssl_cert_reqs=none", &u, err, sizeof err), -1);
    CHECK(strstr(err, "unknown URL parameter 'ssl_cert_reqs'"));
    CHECK_EQ_INT(redis_url_parse("redis://h/0?socket_timeout=-1", &u, err, sizeof err), -1);
    CHECK(strstr(err, "socket_timeout"));
    CHECK_EQ_INT(redis_url_parse("unix://host/tmp/r.sock", &u, err, sizeof err), -1);
    CHECK(strstr(err, "absolute socket path"));
    CHECK_EQ_INT(redis_url_parse("unix://", &u, err, sizeof err), -1);
    CHECK(strstr(err, "no socket path"));
    CHECK_EQ_INT(redis_url_parse("redis://[::1:6379/0", &u, err, sizeof err), -1);
    CHECK(strstr(err, "unterminated '['"));
}

int main(void)
{
    test_json_strings();
    test_json_numbers();
    test_uuids();
    test_queue_names();
    test_build_spec_examples();
    test_validate_rules();
    test_urls();
    return CHECK_DONE();
}
