//! Health states of a target as a pure function of observations.
