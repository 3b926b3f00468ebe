/* test_server_caps.c - the XEP-0115 §5 verification string, from the
 * examples of the XEP (§5.2 simple, §5.3 with an extended form) and the
 * answers §5.4 calls invalid. Table-driven: each case is one disco#info
 * <query/> as a client would send it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "server/modules/caps.h"
#include "starling/xmlstream.h"

#define INFO "http://jabber.org/protocol/disco#info"

static const struct {
    const char *name;
    const char *xml;
    const char *ver; /* NULL = refused */
} cases[] = {
    {"xep0115_5_2_simple_example",
     "<query xmlns='" INFO "'><identity category='client' name='Exodus 0.9.1' type='pc'/>"
     "<feature var='http://jabber.org/protocol/caps'/><feature var='" INFO "'/>"
     "<feature var='http://jabber.org/protocol/disco#items'/>"
     "<feature var='http://jabber.org/protocol/muc'/></query>",
     "QgayPKawpkPSDYmwT/WM94uAlu0="},
    {"xep0115_5_3_complex_example",
     "<query xmlns='" INFO "'>"
     "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
     "<identity xml:lang='el' category='client' name='&#x3a8; 0.11' type='pc'/>"
     "<feature var='http://jabber.org/protocol/caps'/><feature var='" INFO "'/>"
     "<feature var='http://jabber.org/protocol/disco#items'/>"
     "<feature var='http://jabber.org/protocol/muc'/>"
     "<x xmlns='jabber:x:data' type='result'>"
     "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>"
     "<field var='ip_version'><value>ipv4</value><value>ipv6</value></field>"
     "<field var='os'><value>Mac</value></field>"
     "<field var='os_version'><value>10.5.1</value></field>"
     "<field var='software'><value>Psi</value></field>"
     "<field var='software_version'><value>0.11</value></field></x></query>",
     "q07IKJEyjvHSyhy//CH0CxmKi8w="},
    {"xep0115_5_4_duplicate_feature_refused",
     "<query xmlns='" INFO "'><identity category='client' type='pc'/>"
     "<feature var='a'/><feature var='a'/></query>",
     NULL},
    {"xep0115_5_4_duplicate_identity_refused",
     "<query xmlns='" INFO "'><identity category='client' type='pc' name='x'/>"
     "<identity category='client' type='pc' name='y'/></query>",
     NULL},
    {"xep0115_5_4_form_without_form_type_ignored",
     "<query xmlns='" INFO "'><identity category='client' name='Exodus 0.9.1' type='pc'/>"
     "<feature var='http://jabber.org/protocol/caps'/><feature var='" INFO "'/>"
     "<feature var='http://jabber.org/protocol/disco#items'/>"
     "<feature var='http://jabber.org/protocol/muc'/>"
     "<x xmlns='jabber:x:data' type='result'><field var='os'><value>Mac</value></field></x></query>",
     "QgayPKawpkPSDYmwT/WM94uAlu0="},
};

static void xep0115_5_verification_string(void **state)
{
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *err = NULL;
        st_stanza *q = st_xml_parse_element(cases[i].xml, strlen(cases[i].xml), &err);
        assert_non_null(q);
        char ver[64];
        int r = st_caps_ver(q->root, ver, sizeof ver);
        if (cases[i].ver) {
            if (r != 0 || strcmp(ver, cases[i].ver) != 0)
                fail_msg("%s: got %s", cases[i].name, r == 0 ? ver : "(refused)");
        } else if (r == 0) {
            fail_msg("%s: accepted as %s", cases[i].name, ver);
        }
        st_stanza_unref(q);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(xep0115_5_verification_string),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
