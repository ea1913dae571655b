//! What the verified-token cache says it holds (`duo_workflow_auth_verified_token_cache_bytes`,
//! bounded by `limits.verified_token_cache_bytes`) against what its entries take from the heap,
//! measured by a counting allocator: the byte bound must bound the memory. Its own test binary:
//! the allocator is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use duo_workflow_adapters::authenticator::DynKeySource;
use duo_workflow_adapters::jose::keys::PublicKey;
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_adapters::verified_cache::{CacheLimits, Entry, VerifiedCache};
use duo_workflow_domain::identity::{Claims, UnitPrimitive};
use duo_workflow_domain::mapping::{ClaimName, ScopeEvidence};
use duo_workflow_domain::{Issuer, UnixTime};

/// Bytes allocated and not freed, as the allocator was asked (no allocator overhead counted).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The claims of a user token as `GenerateToken` mints them.
fn user_claims(i: usize) -> Claims {
    Claims {
        issuer: Issuer::new("gitlab-duo-workflow-service"),
        subject: Some(format!("user-{i}")),
        audience: vec!["gitlab-duo-workflow-service".into()],
        scopes: [
            "duo_agent_platform",
            "duo_chat",
            "duo_workflow_execute_workflow",
        ]
        .iter()
        .map(|s| UnitPrimitive::new(*s))
        .collect(),
        // What verification records of where the unit primitives came from (names only).
        scope_evidence: ScopeEvidence {
            looked_at: vec![ClaimName::SCOPES],
            found_in: Some(ClaimName::SCOPES),
            provider_scopes: vec![
                "duo_agent_platform".into(),
                "duo_chat".into(),
                "duo_workflow_execute_workflow".into(),
            ],
        },
        realm: Some("self-managed".into()),
        instance_id: Some("instance-1".into()),
        caller_instance: Some("instance-1".into()),
        duo_seat_count: None,
        copied: vec![],
        jti: Some(format!("{i:08}-7c1e-4b5e-9d7a-1f2e3d4c5b6a")),
        expires_at: UnixTime::from_secs(2_000_000_000),
        not_before: UnixTime::from_secs(1_000_000_000),
        issued_at: UnixTime::from_secs(1_000_000_000),
    }
}

#[test]
fn the_byte_bound_bounds_what_the_entries_take_from_the_heap() {
    let key = PublicKey::ed25519(&[7; 32]).unwrap().into_issuer_key(None);
    let source: DynKeySource = Arc::new(
        StaticKeySource::new(
            "local-authority",
            Issuer::new("gitlab-duo-workflow-service"),
            vec![],
            vec![key],
            UnixTime::from_secs(0).unwrap(),
        )
        .unwrap(),
    );
    let keys = source.current().unwrap();
    const N: usize = 5_000;
    let cache = VerifiedCache::new(CacheLimits {
        max_entries: N,
        max_bytes: usize::MAX / 2,
    });
    // Everything an entry brings is counted: its claims as a verification leaves them, the
    // entry, and its place in the cache's map and order.
    let before = LIVE.load(Ordering::SeqCst);
    for i in 0..N {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
        cache.insert(
            digest,
            Entry::new(user_claims(i), source.clone(), &keys, 700),
        );
    }
    let held = (LIVE.load(Ordering::SeqCst) - before) as usize;
    let (entries, accounted) = cache.usage();
    assert_eq!(entries, N);
    println!(
        "{N} entries: accounted {} bytes ({} per entry), on the heap {} bytes ({} per entry)",
        accounted,
        accounted / N,
        held,
        held / N
    );
    assert!(
        accounted >= held,
        "the cache accounts {} bytes per entry, its entries take {} from the heap",
        accounted / N,
        held / N
    );
}
