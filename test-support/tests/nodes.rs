//! Two nodes on one machine: they reach each other, and vanish with everything in them.

use haul_test_support::{test, Need::Root, NodePair};

fn nodes_reach_each_other_and_vanish_on_drop() {
    let (a, b);
    {
        let pair = NodePair::new("t").expect("node pair");
        a = pair.a.netns.clone();
        b = pair.b.netns.clone();
        let out = pair
            .a
            .command("ping")
            .args(["-c", "1", "-W", "5", &pair.b.addr])
            .output()
            .expect("ping");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mut sleeper = pair.b.command("sleep").arg("60").spawn().unwrap();
        let pid = sleeper.id() as i32;
        haul_test_support::wait_for(
            "sleep in node b",
            std::time::Duration::from_secs(10),
            || haul_test_support::nodes::procs_in_netns(&b).contains(&pid),
        );
        drop(pair);
        let _ = sleeper.wait();
    }
    assert!(!std::path::Path::new(&format!("/run/netns/{a}")).exists());
    assert!(!std::path::Path::new(&format!("/run/netns/{b}")).exists());
}

fn main() -> std::process::ExitCode {
    haul_test_support::run(vec![test!(nodes_reach_each_other_and_vanish_on_drop, Root)])
}
