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
