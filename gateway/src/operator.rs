//! Messages to the operator: one line on stderr per operational problem (a broker away, a
//! damaged checkpoint, an accept error). No key, credential or prompt is ever part of one.

use std::io::{self, Write as _};

/// Reports an operational problem on stderr.
pub fn report(message: &str) {
    let _ = writeln!(io::stderr().lock(), "tollgate: {message}");
}
