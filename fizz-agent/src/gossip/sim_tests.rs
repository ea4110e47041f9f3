//! Membership behaviour on whole simulated clusters ([`super::sim`]).

use std::{net::SocketAddr, time::Duration};

use rand::{rngs::SmallRng, RngExt, SeedableRng};

use super::{
    crypto::{DropReason, Key},
    sim::{addr, meta, Sim, SECRET},
    Event, MemberState, Membership, Tuning,
};

#[test]
fn a_cluster_converges_and_carries_metadata() {
    let mut sim = Sim::cluster(1, 5);
    sim.converge(Duration::from_secs(3)).unwrap();
    let views = sim.nodes[4].membership.members();
    assert_eq!(views.len(), 5);
    assert_eq!(views[0].name, "node4");
    let node2 = views.iter().find(|v| v.name == "node2").unwrap();
    assert_eq!(
        (
            node2.addr,
            node2.range.as_str(),
            node2.wg_pubkey.as_str(),
            node2.generation
        ),
        (addr(2), "10.42.2.0/24", "wg-key-of-node2", 1)
    );
    assert!(sim.nodes[3]
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::MemberUp(v) if v.name == "node1")));
    assert!(sim.nodes[3].events.iter().any(|(_, e)| *e == Event::Joined));
}

/// The acceptance bound for crash detection with the default tuning.
const DETECTION_BOUND: Duration = Duration::from_secs(7);

#[test]
fn a_crashed_node_is_down_everywhere_within_the_bound() {
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    for (seed, size) in (0..12).map(|s| (s, [3, 5, 8, 20][s as usize % 4])) {
        let mut sim = Sim::cluster(100 + seed, size);
        sim.converge(Duration::from_secs(3)).unwrap();
        // Let probing settle into its rhythm, then crash a node at an arbitrary moment.
        sim.run_for(Duration::from_millis(5_000 + 137 * seed));
        let victim = size - 1 - (seed as usize % 2);
        sim.nodes[victim].running = false;
        let times = sim.time_to_down(victim, Duration::from_secs(20)).unwrap();
        let slowest = *times.iter().max().unwrap();
        eprintln!("seed {seed}, {size} nodes: down everywhere after {slowest:?}");
        worst = worst.max(slowest);
        all.push(slowest);
        for i in (0..size).filter(|i| *i != victim) {
            assert_eq!(sim.downs(i), [format!("node{victim}")]);
        }
    }
    let mean = all.iter().sum::<Duration>() / all.len() as u32;
    eprintln!("crash detection: mean {mean:?}, worst {worst:?}");
    assert!(worst <= DETECTION_BOUND, "worst detection {worst:?}");
}

#[test]
fn ten_percent_loss_declares_no_one_down_for_a_minute() {
    for (seed, size) in [(7, 3), (8, 5), (9, 3), (10, 8), (11, 3), (12, 5), (13, 20)] {
        let mut sim = Sim::cluster(seed, size);
        sim.converge(Duration::from_secs(3)).unwrap();
        sim.loss = 0.10;
        sim.run_for(Duration::from_secs(60));
        let mut suspicions = 0;
        for i in 0..size {
            assert_eq!(
                sim.downs(i),
                Vec::<String>::new(),
                "seed {seed}: node{i} saw downs"
            );
            let events = &sim.nodes[i].events;
            suspicions += events
                .iter()
                .filter(|(_, e)| matches!(e, Event::MemberSuspect(_)))
                .count();
            // A refuted suspicion must not make the suspect give up its identity.
            let rejoins = events
                .iter()
                .filter(|(_, e)| matches!(e, Event::Rejoined { .. }))
                .count();
            assert_eq!(rejoins, 0, "seed {seed}: node{i} rejoined");
        }
        // The loss was real: some probes failed and were refuted.
        eprintln!("seed {seed}, {size} nodes, 10% loss: {suspicions} suspicions, 0 downs");
        let all: Vec<_> = (0..size).collect();
        sim.loss = 0.0;
        sim.run_for(Duration::from_secs(5));
        assert!(sim.all_alive(&all));
    }
}

#[test]
fn a_node_with_the_wrong_key_never_becomes_a_member() {
    let mut sim = Sim::cluster(3, 3);
    let intruder = sim.add("intruder", b"a guessed secret");
    sim.join(intruder, &[0, 1, 2]);
    sim.run_for(Duration::from_secs(20));
    for i in 0..3 {
        assert_eq!(sim.state(i, "intruder"), None);
        assert!(sim.nodes[i]
            .events
            .iter()
            .all(|(_, e)| !matches!(e, Event::MemberUp(v) if v.name == "intruder")));
    }
    assert_eq!(sim.nodes[intruder].membership.members().len(), 1);
    assert!(!sim.nodes[intruder].membership.is_connected());
    let stats = sim.nodes[0].membership.stats();
    // One hello a second for 20 s, all dropped before anything decoded them.
    assert!(stats.dropped.unauthentic >= 19, "{stats:?}");
    assert_eq!(sim.nodes[intruder].membership.stats().accepted, 0);
    assert!(sim.all_alive(&[0, 1, 2]));
}

#[test]
fn hostile_packets_are_counted_and_ignored() {
    let mut sim = Sim::cluster(4, 3);
    sim.converge(Duration::from_secs(3)).unwrap();
    sim.run_for(Duration::from_secs(5));
    let captured = std::mem::take(&mut sim.tap);
    assert!(captured.len() > 20);
    let attacker = SocketAddr::from(([10, 9, 9, 9], 7946));
    let before = sim.nodes[0].membership.stats();
    let mut rng = SmallRng::seed_from_u64(99);
    const N: u64 = 100_000;
    for n in 0..N {
        let mut packet = match n % 6 {
            // Noise of any length.
            0 => {
                let len = rng.random_range(0..1_600);
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
            }
            // Noise that looks like an envelope, sealed now or five minutes ago.
            1 => {
                let mut p: Vec<u8> = (0..rng.random_range(49..300))
                    .map(|_| rng.random())
                    .collect();
                p[0] = super::crypto::VERSION;
                let age = rng.random_range(0..2u64) * 300_000;
                let sealed_ms = sim.now.as_millis() as u64 - age;
                p[25..33].copy_from_slice(&sealed_ms.to_be_bytes());
                p
            }
            // A captured packet, replayed.
            2 => captured[rng.random_range(0..captured.len())].clone(),
            // A captured packet, truncated.
            3 => {
                let p = &captured[rng.random_range(0..captured.len())];
                p[..rng.random_range(0..p.len())].to_vec()
            }
            // A captured packet with a few bytes changed.
            4 => {
                let mut p = captured[rng.random_range(0..captured.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..p.len());
                    p[at] ^= rng.random_range(1..=255u8);
                }
                p
            }
            // Junk appended to a captured packet.
            _ => {
                let mut p = captured[rng.random_range(0..captured.len())].clone();
                p.extend((0..rng.random_range(1..100)).map(|_| rng.random::<u8>()));
                p
            }
        };
        let out = sim.nodes[0]
            .membership
            .handle_packet(sim.now, attacker, &packet);
        assert!(out.is_empty(), "packet {n} made node0 act");
        packet.clear();
    }
    let after = sim.nodes[0].membership.stats();
    assert_eq!(after.received - before.received, N);
    assert_eq!(
        after.accepted, before.accepted,
        "a hostile packet was accepted"
    );
    let dropped = |r: DropReason| after.dropped.get(r) - before.dropped.get(r);
    assert_eq!(DropReason::ALL.iter().map(|r| dropped(*r)).sum::<u64>(), N);
    for reason in [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::UnknownVersion,
        DropReason::Stale,
        DropReason::Replayed,
        DropReason::Unauthentic,
    ] {
        assert!(dropped(reason) > 100, "{reason:?}: {after:?}");
    }
    eprintln!("hostile packets: {:?}", after.dropped);

    // Garbage from a key holder (a buggy member): authentic, so it reaches the decoder, which
    // must refuse it without panicking.
    let key = Key::derive(SECRET);
    let mut sealer = super::crypto::Sealer::new([0xee; 16]);
    const M: u64 = 10_000;
    for _ in 0..M {
        let len = rng.random_range(1..400);
        let mut plaintext: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // A foca message or an unknown frame (a hello would rightly be answered).
        plaintext[0] = if rng.random_bool(0.8) {
            0
        } else {
            rng.random_range(3..=255)
        };
        let now_ms = sim.now.as_millis() as u64;
        let packet = super::crypto::seal(&key, &mut sealer, now_ms, &plaintext).unwrap();
        sim.nodes[0]
            .membership
            .handle_packet(sim.now, attacker, &packet);
    }
    let last = sim.nodes[0].membership.stats();
    let malformed = last.dropped.malformed - after.dropped.malformed;
    eprintln!("authentic garbage: {malformed} of {M} malformed");
    assert_eq!(last.received - after.received, M);
    assert_eq!(malformed + (last.accepted - after.accepted), M);
    assert!(malformed > M * 99 / 100, "{last:?}");
    // The cluster did not notice.
    sim.run_for(Duration::from_secs(10));
    assert!(sim.all_alive(&[0, 1, 2]));
    assert!((0..3).all(|i| sim.downs(i).is_empty()));
}

#[test]
fn a_graceful_leave_is_seen_at_once() {
    let mut sim = Sim::cluster(5, 4);
    sim.converge(Duration::from_secs(3)).unwrap();
    sim.run_for(Duration::from_secs(2));
    let out = sim.nodes[3].membership.leave(sim.now);
    sim.apply(3, out);
    sim.nodes[3].running = false;
    let times = sim.time_to_down(3, Duration::from_secs(2)).unwrap();
    eprintln!("leave seen after {times:?}");
    assert!(times.iter().all(|t| *t < Duration::from_millis(500)));
}

#[test]
fn a_restarted_node_supersedes_its_previous_process() {
    let mut sim = Sim::cluster(6, 4);
    sim.converge(Duration::from_secs(3)).unwrap();
    sim.run_for(Duration::from_secs(2));
    // Killed and restarted before anyone noticed: renewed in place, never down.
    sim.nodes[2].running = false;
    sim.run_for(Duration::from_millis(300));
    sim.restart(2, 2);
    sim.run_for(Duration::from_secs(15));
    for i in [0, 1, 3] {
        assert!(sim.downs(i).is_empty(), "node{i}: {:?}", sim.downs(i));
        let renewed = sim.nodes[i].events.iter().any(|(_, e)| {
            matches!(e, Event::MemberRenewed { previous, current }
                if current.name == "node2" && previous.generation == 1 && current.generation == 2)
        });
        assert!(renewed, "node{i} did not see node2 renewed");
    }
    assert!(sim.all_alive(&[0, 1, 2, 3]));

    // Killed, declared down, then restarted: up again as the new generation.
    sim.nodes[2].running = false;
    sim.time_to_down(2, Duration::from_secs(10)).unwrap();
    sim.restart(2, 3);
    sim.converge(Duration::from_secs(3)).unwrap();
    let seen = sim.nodes[0].membership.members();
    assert_eq!(seen.iter().filter(|v| v.name == "node2").count(), 1);
    assert_eq!(
        seen.iter().find(|v| v.name == "node2").unwrap().generation,
        3
    );
    // The restarted process lists neither itself nor its previous generation as a member.
    let own = sim.nodes[2].membership.members();
    assert_eq!(own.iter().filter(|v| v.name == "node2").count(), 1);
}

#[test]
fn a_restarted_seed_is_found_again_without_seeds_of_its_own() {
    let mut sim = Sim::cluster(13, 4);
    sim.converge(Duration::from_secs(3)).unwrap();
    sim.nodes[0].running = false;
    sim.run_for(Duration::from_millis(500));
    let name = sim.nodes[0].membership.meta().name.clone();
    sim.nodes[0].membership = sim.membership(0, &name, 2, SECRET);
    sim.nodes[0].running = true;
    // No join: it only hears probes addressed to its previous generation.
    sim.converge(Duration::from_secs(3)).unwrap();
    // It sees everyone as soon as one prober's gossip reaches it; the others learn of its new
    // generation as their probes reach it.
    let knows_gen2 = |sim: &Sim| (1..4).all(|i| sim.nodes[i].membership.members()[1].generation == 2);
    let start = sim.now;
    while !knows_gen2(&sim) && sim.now - start < Duration::from_secs(5) {
        sim.run_for(Duration::from_millis(10));
    }
    for i in 1..4 {
        assert!(sim.downs(i).is_empty());
        assert_eq!(sim.nodes[i].membership.members()[1].generation, 2, "node{i}");
    }
}

#[test]
fn a_partitioned_node_comes_back_after_healing() {
    let mut sim = Sim::cluster(11, 4);
    sim.converge(Duration::from_secs(3)).unwrap();
    sim.isolated.insert(3);
    sim.time_to_down(3, Duration::from_secs(10)).unwrap();
    sim.run_for(Duration::from_secs(5));
    assert!(sim.nodes[3]
        .events
        .iter()
        .any(|(_, e)| *e == Event::Isolated));
    sim.isolated.clear();
    let healed = sim.now;
    sim.converge(Duration::from_secs(10)).unwrap();
    eprintln!("partition healed after {:?}", sim.now - healed);
    assert!(
        sim.nodes[3].membership.generation() > 1,
        "came back as a new generation"
    );
}

#[test]
fn a_metadata_change_spreads_without_downtime() {
    let mut sim = Sim::cluster(12, 4);
    sim.converge(Duration::from_secs(3)).unwrap();
    let mut renamed = sim.nodes[1].membership.meta().clone();
    renamed.name = "other".into();
    assert!(sim.nodes[1]
        .membership
        .update_meta(sim.now, renamed)
        .is_err());
    let mut new = sim.nodes[1].membership.meta().clone();
    new.wg_pubkey = "rotated-key".into();
    let out = sim.nodes[1].membership.update_meta(sim.now, new).unwrap();
    sim.apply(1, out);
    sim.run_for(Duration::from_secs(3));
    for i in [0, 2, 3] {
        let v = sim.nodes[i].membership.members();
        let node1 = v.iter().find(|m| m.name == "node1").unwrap();
        assert_eq!(
            (node1.wg_pubkey.as_str(), node1.state),
            ("rotated-key", MemberState::Alive)
        );
        assert_eq!(node1.generation, 2);
        assert!(sim.downs(i).is_empty());
    }
    assert!(sim.all_alive(&[0, 1, 2, 3]));
}

#[test]
fn bad_configuration_is_refused() {
    let key = Key::derive(SECRET);
    let tuning = Tuning {
        probe_rtt: Duration::from_secs(2),
        ..Tuning::default()
    };
    let err = Membership::new(meta(0, "a"), 1, key.clone(), tuning, [0; 32]).unwrap_err();
    assert!(err.to_string().contains("probe_rtt"), "{err}");
    let err = Membership::new(meta(0, "a b"), 1, key, Tuning::default(), [0; 32]).unwrap_err();
    assert!(err.to_string().contains("node name"), "{err}");
}
