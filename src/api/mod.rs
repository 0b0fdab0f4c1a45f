//! Custom resource types of `asgbatch.io/v1alpha1`.
