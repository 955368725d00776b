//! The embedded API server (Kubernetes REST dialect for group shoal.dev).
