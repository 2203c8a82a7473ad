//! The contract tests; [`contract_tests!`](crate::contract_tests!) calls each of them from its
//! own test.

mod fanout;
mod inbound;
mod lifecycle;

pub use fanout::*;
pub use inbound::*;
pub use lifecycle::*;
