//! Pure scheduling logic: queue order, bin-packing, capacity plan, retry decisions.
