//! Two engines in their own network namespaces publish the same host port; each answers
//! on its own address with its own content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::{ContainerSpec, Host, http_get};

const PORT: u16 = 18080;

#[tokio::test]
async fn two_hosts_publish_the_same_port_independently() {
    let (a, b) = tokio::join!(Host::start("mh-a"), Host::start("mh-b"));
    let (a, b) = (a.expect("host a"), b.expect("host b"));
    assert_ne!(a.address, b.address);

    let mut containers = Vec::new();
    for host in [&a, &b] {
        let engine = host.engine().await.expect("host engine");
        let script = format!(
            "echo {} > /www/index.html; exec httpd -f -p 8080 -h /www",
            host.name
        );
        let c = engine
            .run(&ContainerSpec::shell(&script).publish(8080, PORT))
            .await
            .expect("run web server");
        containers.push(c);
    }

    for host in [&a, &b] {
        let addr = SocketAddr::from((host.address, PORT));
        let body = http_get(addr, "/", Duration::from_secs(15))
            .await
            .expect("GET from host");
        assert_eq!(body.trim(), host.name, "answer of {addr}");
    }

    // A partitioned host is unreachable; healed, it answers again.
    a.partition().await.expect("partition");
    let addr_a = SocketAddr::from((a.address, PORT));
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr_a),
    )
    .await;
    assert!(
        !matches!(cut, Ok(Ok(_))),
        "partitioned host still accepted a connection"
    );
    a.heal().await.expect("heal");
    let body = http_get(addr_a, "/", Duration::from_secs(15))
        .await
        .expect("GET after heal");
    assert_eq!(body.trim(), a.name);

    for c in containers {
        c.remove().await.expect("remove");
    }
    let (ra, rb) = tokio::join!(a.stop(), b.stop());
    ra.expect("stop host a");
    rb.expect("stop host b");
}
