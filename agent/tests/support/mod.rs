//! Shared by the agent's process tests.

/// Whether a test that needs root may run: without CAP_NET_ADMIN it says
/// SKIP and passes, except under CI (`CI` set), where it fails.
pub(crate) fn allowed(test: &str) -> bool {
    if netdb_dataplane::has_net_admin() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run as root (CAP_NET_ADMIN)");
    eprintln!("SKIP {test}: needs CAP_NET_ADMIN (run as root)");
    false
}
