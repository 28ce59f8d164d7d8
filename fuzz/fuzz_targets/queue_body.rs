//! A queue message's body split into its records' bytes and handed on
//! undecoded (`tributary::wire`), then each record decoded as a parser
//! does. The oracle: nothing panics, and the split agrees with decoding
//! the body as the public `RecordBatch`. Where that decodes, every split
//! record decodes, to the same records; where a split record fails, or the
//! split does, so does the public decode. The one allowed difference:
//! inside a batch a record sits one level deeper, so a record nested to
//! prost's recursion limit decodes alone but not in the batch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::{Message, bytes::Bytes};
use tributary::{
    proto::{Record, RecordBatch},
    wire,
};

fuzz_target!(|body: &[u8]| {
    let public = RecordBatch::decode(body);
    match wire::split(Bytes::copy_from_slice(body)) {
        Err(e) => assert!(public.is_err(), "split failed ({e}) but the batch decodes"),
        Ok(parts) => {
            let delivery = wire::Delivery {
                records: parts,
                ..Default::default()
            };
            let decoded: Result<Vec<Record>, _> = delivery.records().collect();
            match (decoded, public) {
                (Ok(records), Ok(batch)) => {
                    assert_eq!(records.len(), batch.records.len());
                    // A record holding a NaN equals nothing, itself
                    // included, so it is taken as it is.
                    #[allow(clippy::eq_op)]
                    for (split, public) in records.iter().zip(&batch.records) {
                        assert!(split == public || split != split, "{split:?} against {public:?}");
                    }
                }
                (Err(_), Err(_)) => {}
                (Ok(_), Err(e)) if e.to_string().contains("recursion limit") => {}
                (decoded, public) => panic!("split gives {decoded:?}, the batch {public:?}"),
            }
        }
    }
});
