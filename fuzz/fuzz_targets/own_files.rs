//! Arbitrary bytes as each file bgd writes and reads back: `state.json`,
//! `history.json`, a run record (`run/COLOR.json`), `operator.json` and a
//! kept copy's manifest (`releases/<id>.manifest`).
//!
//! Properties:
//! - No reader panics, whatever the bytes.
//! - What a reader accepts comes back unchanged from a write and a read
//!   (state, run record, operator decisions, history).
//! - The history keeps what comes before damage: the records read from
//!   the bytes, written out again and cut anywhere (a torn write), read
//!   back as a prefix of those records missing at most the last one.
//! - A manifest that is whole counts its entries; one cut short is never
//!   whole.
#![no_main]

use bgd::pipeline::manifest;
use bgd::store::{history, operator, state};
use bgd::supervise::adoption;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = state::parse(data) {
        let again = serde_json::to_vec_pretty(&s).unwrap();
        assert_eq!(state::parse(&again).as_ref(), Ok(&s), "state round trip");
    }
    if let Ok(r) = adoption::parse_record(data) {
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(adoption::parse_record(&again).as_ref(), Ok(&r), "run record round trip");
    }
    if let Ok(o) = operator::parse(data) {
        let again = serde_json::to_vec_pretty(&o).unwrap();
        assert_eq!(operator::parse(&again).as_ref(), Ok(&o), "operator round trip");
    }
    history_keeps_a_prefix(data);
    let read = manifest::parse(data);
    if read.whole && !data.is_empty() {
        assert!(!manifest::parse(&data[..data.len() - 1]).whole, "a cut manifest is whole");
    }
});

fn history_keeps_a_prefix(data: &[u8]) {
    let (records, _) = history::parse(data);
    let whole = serde_json::to_vec_pretty(&records).unwrap();
    let (again, damage) = history::parse(&whole);
    assert_eq!(again, records, "history round trip");
    assert_eq!(damage, None, "a history bgd wrote reads whole");
    // A cut chosen by the input's length.
    let cut = data.len() % (whole.len() + 1);
    let (torn, _) = history::parse(&whole[..cut]);
    assert!(torn.len() <= records.len());
    assert_eq!(torn[..], records[..torn.len()], "a torn history is a prefix");
    if cut + 2 >= whole.len() {
        assert!(torn.len() + 1 >= records.len(), "at most the last record is lost");
    }
}
