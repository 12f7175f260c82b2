//! Checked zero-copy views of what arrives on a media port.
