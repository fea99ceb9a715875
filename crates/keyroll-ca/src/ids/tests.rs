//! Round trips and refusals of the identifiers.

use super::*;

#[test]
fn serial_from_random_is_positive_sixteen_bytes_and_round_trips() {
    let s = Serial::from_random([0xff; 16]);
    assert_eq!(s.as_bytes()[0], 0x7f);
    let z = Serial::from_random([0; 16]);
    assert_eq!(z.as_bytes()[0], 0x40);
    assert_eq!(Serial::parse(&s.to_string()), Ok(s));
    assert_eq!(s.to_string().len(), 32);
}

#[test]
fn spiffe_ids_parse_and_refuse_with_reasons() {
    let id = SpiffeId::parse("spiffe://example.org/prod/billing-app").unwrap();
    assert_eq!(id.path(), "prod/billing-app");
    assert_eq!(id.trust_domain().as_str(), "example.org");
    assert_eq!(id.to_string(), "spiffe://example.org/prod/billing-app");
    for bad in [
        "https://example.org/prod/x",
        "spiffe://Example.org/prod/x",
        "spiffe://example.org/prod",
        "spiffe://example.org/prod/x/y",
        "spiffe://example.org/pro-d/x",
        "spiffe://.org/prod/x",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn fingerprints_round_trip() {
    let f = Fingerprint::of(b"abc");
    assert!(f.to_string().starts_with("sha256:ba7816bf"));
    assert_eq!(Fingerprint::parse(&f.to_string()), Ok(f));
    assert!(Fingerprint::parse("sha1:00").is_err());
}

#[test]
fn codes_and_reasons_round_trip() {
    for c in crate::CertCode::ALL {
        assert_eq!(crate::CertCode::parse(c.as_str()), Some(c));
    }
    assert_eq!(
        crate::CertCode::ALL.iter().filter(|c| c.allowed()).count(),
        1
    );
    for r in crate::RevocationReason::ALL {
        assert_eq!(crate::RevocationReason::parse(r.as_str()), Ok(r));
    }
}

proptest::proptest! {
    #[test]
    fn serials_round_trip(bytes in proptest::array::uniform16(proptest::num::u8::ANY)) {
        let s = Serial::from_random(bytes);
        proptest::prop_assert_eq!(Serial::parse(&s.to_string()), Ok(s));
        proptest::prop_assert_eq!(Serial::from_der_integer(s.as_bytes()), Some(s));
    }

    #[test]
    fn trust_domains_and_ids_round_trip(
        td in "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}",
        env in "[a-z][a-z0-9]{0,15}",
        svc in "[a-z][a-z0-9-]{0,62}",
    ) {
        let td = TrustDomain::parse(&td).unwrap();
        proptest::prop_assert_eq!(TrustDomain::parse(&td.to_string()), Ok(td.clone()));
        let id = SpiffeId::from_parts(&td, &env, &svc).unwrap();
        proptest::prop_assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn garbage_never_panics(s in "\\PC{0,300}") {
        let _ = Serial::parse(&s);
        let _ = TrustDomain::parse(&s);
        let _ = SpiffeId::parse(&s);
        let _ = Fingerprint::parse(&s);
        let _ = crate::inspect(s.as_bytes());
        let _ = crate::parse_pem_certs(s.as_bytes());
    }
}
