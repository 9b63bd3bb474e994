//! What masking a row costs the gateway: one DataRow of a typical customer
//! table (id, name, email, ssn, card, notes) rewritten with two columns masked
//! whole and the content detectors reading the rest, against the same row
//! relayed untouched (detectors finding nothing).
//!
//!     cargo bench -p airlock-data-plane --bench mask

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use airlock_core::policy::{MaskStrategy, Policy, ResultMask, WholeMask};
use airlock_data_plane::postgres::masking::{Column, ValueKind, mask_row_into, shape};
use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};

const POLICY: &str = "version: 1\nmasking:\n  - name: pii\n    columns: ['*.*.email', 'public.customers.ssn']\n    strategy: redact\n  - name: content\n    detectors: [credit_card, email, iban, national_id, api_key]\n    strategy: partial\n";

fn row(values: &[&str]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_u16(values.len() as u16);
    for v in values {
        out.put_i32(v.len() as i32);
        out.extend_from_slice(v.as_bytes());
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.to_vec()
}

fn mask(c: &mut Criterion) {
    let policy = Policy::parse(POLICY).unwrap();
    let rules = Arc::new(ResultMask::unread(policy.masking));
    let whole = WholeMask { rule: "pii".into(), strategy: MaskStrategy::Redact };
    let columns = vec![
        (Column::Detect, ValueKind::Scalar, false),
        (Column::Detect, ValueKind::Text, false),
        (Column::Whole(whole.clone()), ValueKind::Text, false),
        (Column::Whole(whole), ValueKind::Text, false),
        (Column::Detect, ValueKind::Text, false),
        (Column::Detect, ValueKind::Text, false),
    ];
    let masked = shape(columns, rules.clone());
    let sensitive = row(&[
        "42",
        "Ana Lima",
        "ana@example.com",
        "123-45-6789",
        "4111 1111 1111 1111",
        "called back about the refund",
    ]);
    let clean = row(&["42", "Ana Lima", "", "", "none on file", "called back about the refund"]);
    let detect_only = shape(vec![(Column::Detect, ValueKind::Text, false); 6], rules);
    // As the session does: rows appended to the buffer that goes to the client.
    let mut out = BytesMut::with_capacity(64 * 1024);
    c.bench_function("row/masked", |b| {
        b.iter(|| {
            out.clear();
            black_box(mask_row_into(black_box(&sensitive), &masked, b"tenant", &mut out))
        })
    });
    c.bench_function("row/detectors-find-nothing", |b| {
        b.iter(|| {
            out.clear();
            black_box(mask_row_into(black_box(&clean), &detect_only, b"tenant", &mut out))
        })
    });
}

criterion_group!(benches, mask);
criterion_main!(benches);
