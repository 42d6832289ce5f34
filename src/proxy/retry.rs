//! The retry rule (one function) and the retry budget.
