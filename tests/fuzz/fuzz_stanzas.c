/* fuzz_stanzas.c - libFuzzer target for the modules' payload parsing,
 * through the real server.
 *
 * This is fuzz_c2s's harness (an in-process starlingd, one socketpair per
 * input, first byte = logged in or not and the write size; see
 * tests/fuzz/fuzz_c2s.c) with one difference: every built-in module is
 * enabled (but register, see below), including those off by default
 * (mam), so roster, presence
 * subscriptions, blocking, vCard, private XML, PEP/pubsub, MAM forms and
 * RSM, carbons and push all parse fuzzer input. It has its own seed corpus
 * (tests/fuzz/corpus/fuzz_stanzas/) of rich module payloads, so the
 * fuzzer's time goes to the modules rather than to stream negotiation,
 * which fuzz_c2s already covers.
 *
 * Why include the other target's source rather than share a library: the
 * harness is test code used by exactly these two targets, and including it
 * keeps one copy of the login and pump logic without a new build product.
 * Its LLVMFuzzerInitialize is replaced (renamed away below) and its
 * LLVMFuzzerTestOneInput wrapped, to wait for storage between inputs. */
#define LLVMFuzzerInitialize fuzz_c2s_initialize_unused
#define LLVMFuzzerTestOneInput fuzz_c2s_one_input
#include "tests/fuzz/fuzz_c2s.c"
#undef LLVMFuzzerInitialize
#undef LLVMFuzzerTestOneInput

static void barrier_work(void *h, void *arg)
{
}

static void barrier_done(void *arg)
{
    *(int *)arg = 1;
}

/* Let the storage work an input started finish before the next input logs
 * in. Module IQs answered after storage (jabber:iq:last, PEP, MAM) would
 * otherwise be delivered to the next input's session, which has the same
 * full JID, and the harness would take that late <iq/> for its bind result
 * (a false "could not log in"). One storage thread runs jobs in order, so
 * an empty job's completion means every earlier job has completed; a few
 * rounds cover completions that submit more work. */
static void settle(void)
{
    for (int round = 0; round < 3; round++) {
        int done = 0;
        if (st_storage_submit(srv->store, barrier_work, barrier_done, &done) != 0) return;
        for (int i = 0; i < 10000 && !done; i++)
            st_loop_run_once(srv->loop, 1);
        for (int i = 0; i < 20; i++)
            st_loop_run_once(srv->loop, 0);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char mods[1024] = "modules =";
    size_t used = strlen(mods);
    /* Every module we have, so none of their parsers is out of reach, but
     * register: an input that removes the harness's account or changes its
     * password would make every later login fail, a false finding. Its
     * pre-login use is fuzz_c2s's job. */
    for (size_t i = 0; st_builtin_modules[i] && used < sizeof mods; i++)
        if (strcmp(st_builtin_modules[i]->name, "register") != 0)
            used += (size_t)snprintf(mods + used, sizeof mods - used, " %s",
                                     st_builtin_modules[i]->name);
    if (used < sizeof mods - 1) strcat(mods, "\n");
    /* With the default window (10 minutes) the auth-failure limit still
     * refuses the harness's own login after a few minutes of fuzzing, a
     * false finding ("could not log in"). */
    start_server("fuzz_stanzas", "/tmp/starling-fuzz-stanzas-XXXXXX",
                 "auth_failure_window = 1\n", mods);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int r = fuzz_c2s_one_input(data, size);
    settle();
    return r;
}
