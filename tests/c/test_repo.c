/* repo.c helpers that need no repository: masking secrets in URLs inside messages. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "repo.h"

static void masked(const char *in, const char *expected)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", in);
    repo_mask_url_secrets(buf);
    CHECK_STR(buf, expected);
}

int main(void)
{
    masked("https://user:secret@example.com/o/r.git", "https://user:***@example.com/o/r.git");
    masked("fetch from https://x-access-token:ghp_abc123@github.com/a/b failed: 401",
           "fetch from https://x-access-token:***@github.com/a/b failed: 401");
    masked("http://u:p@h/x and ssh://git:pw@h2/y", "http://u:***@h/x and ssh://git:***@h2/y");
    masked("https://user@example.com/o/r.git", "https://user@example.com/o/r.git");
    masked("https://example.com/a:b@c", "https://example.com/a:b@c");   /* '@' in the path */
    masked("no url here: a:b@c", "no url here: a:b@c");
    masked("https://u:***@h/x", "https://u:***@h/x");
    masked("https://u:@h/x", "https://u:***@h/x");
    masked("", "");
    char err[REPO_ERRLEN];
    CHECK_EQ_INT(repo_global_init(err), REPO_OK);
    CHECK_EQ_INT(repo_global_init(err), REPO_OK);   /* once per process, callable twice */
    repo *r = NULL;
    CHECK_EQ_INT(repo_open(&r, "/nonexistent/loreley/path", err), REPO_ENOTREPO);
    CHECK(r == NULL);
    CHECK_STR(err, "/nonexistent/loreley/path is not a git repository");
    CHECK_STR(repo_change_status_name(REPO_CHANGE_RENAMED), "renamed");
    CHECK_STR(repo_change_status_name(REPO_CHANGE_TYPECHANGE), "typechange");
    return CHECK_DONE();
}
