//! Usage events on their way out: appended to the durable log before a call is answered
//! ([`emit`]), folded back into budgets at start ([`restore`]).

pub mod emit;
pub mod restore;
