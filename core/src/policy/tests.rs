use super::*;

const EXAMPLE: &str = include_str!("../../testdata/example-policy.yaml");

#[test]
fn the_example_document_is_accepted_as_written() {
    let p = Policy::parse(EXAMPLE).unwrap();
    assert_eq!(p.access.len(), 2);
    assert_eq!(p.access[0].max_ttl_secs, 3600);
    assert_eq!(p.access[0].approval, Approval::None);
    assert_eq!(
        p.access[1].approval,
        Approval::Review {
            approvers: Approvers { groups: vec!["dba".into()], subjects: vec![] },
            quorum: 1,
            timeout_secs: crate::review::DEFAULT_REQUEST_TIMEOUT_SECS
        }
    );
    assert_eq!(p.commands[0].matcher.kinds, vec![StatementKind::Ddl]);
    assert!(matches!(p.commands[0].action, CommandAction::Review { timeout_secs: 600, .. }));
    assert_eq!(p.commands[1].connections, vec!["*".to_owned()]);
    assert_eq!(p.commands[1].action, CommandAction::Deny);
    assert_eq!(p.masking[0].columns.len(), 3);
    assert!(p.masking[0].columns[0].matches("public", "users", "email"));
    assert_eq!(p.masking[0].strategy, MaskStrategy::Redact);
}

fn refused(doc: &str) -> PolicyError {
    Policy::parse(doc).unwrap_err()
}

#[test]
fn errors_name_the_field_and_the_reason() {
    let e = refused(&EXAMPLE.replace("max_ttl: 30m", "max_ttl: 30 minutes"));
    assert_eq!(e.field, "access[1].max_ttl");
    assert!(e.reason.contains("unit"), "{e}");

    let e = refused(&EXAMPLE.replace("kinds: [ddl]", "kinds: [dll]"));
    assert_eq!(e.field, "commands[0].match.kinds[0]");
    assert!(e.reason.contains("\"dll\""), "{e}");

    let e = refused(&EXAMPLE.replace("quorum: 1", "quorum: 0"));
    assert_eq!(e.field, "access[1].approval.quorum");

    let e = refused(&EXAMPLE.replace("strategy: redact", "strategy: blur"));
    assert_eq!(e.field, "masking[0].strategy");

    let e = refused(&EXAMPLE.replace("action: deny\n  - name: no-file", "action: drop\n  - name: no-file"));
    assert_eq!(e.field, "commands[1].action");

    let e = refused(&EXAMPLE.replace("version: 1", "version: 2"));
    assert_eq!(e.field, "version");

    let e = refused(&EXAMPLE.replace("name: agents-write", "name: agents-read"));
    assert_eq!(e.field, "access[1].name");

    let e = refused(&EXAMPLE.replace("    max_ttl: 1h\n", "    max_ttl: 1h\n    colour: red\n"));
    assert!(e.field.starts_with("access[0]"), "{e}");
    assert!(e.reason.contains("colour"), "{e}");

    let e = refused(&EXAMPLE.replace("\"public.users.ssn\"", "\"users.ssn\""));
    assert_eq!(e.field, "masking[0].columns[1]");

    let e = refused("version: 1\naccess: 7\n");
    assert!(e.field.starts_with("access"), "{e}");
}

#[test]
fn garbage_is_refused_not_panicked_on() {
    for doc in ["", "[", "version", ":::", "version: 1\ncommands: [{}]", "\u{0}"] {
        assert!(Policy::parse(doc).is_err(), "{doc:?}");
    }
}

#[test]
fn aliases_are_refused_before_they_can_expand() {
    let bomb = "version: 1\naccess:\n  - name: a\n    principals: { groups: &g [x, x, x] }\n    connections: [pg]\n    roles: [r]\n    max_ttl: 1h\n    approval: none\n  - name: b\n    principals: { groups: *g }\n    connections: [pg]\n    roles: [r]\n    max_ttl: 1h\n    approval: none\n";
    let e = refused(bomb);
    assert!(e.reason.contains("line 10") && e.reason.contains("aliases"), "{e}");
    // Stars that are not aliases are fine: quoted, inside words, in comments.
    let ok = "version: 1 # *not an alias\nmasking:\n  - name: m\n    columns: ['*.*.email', \"public.*.ssn\"]\n    strategy: redact\n";
    Policy::parse(ok).unwrap();
}
