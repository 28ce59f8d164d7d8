//! Parser specs as an operator writes them (`--parser`, `TRIBUTARY_PARSERS`):
//! a bare type name or a JSON object. The oracle: a spec is refused with a
//! message, or it names a consumer group both queue backends take, passes
//! its own option checks and builds a parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::queue;
use tributary_parser::parsers::ParserSpec;

fuzz_target!(|spec: &str| {
    match ParserSpec::from_spec(spec) {
        Ok(parsed) => {
            assert!(queue::check_group(&parsed.group).is_ok(), "{parsed:?}");
            assert!(parsed.config.check().is_ok());
            let _parser = parsed.config.build();
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
