//! deliverer
