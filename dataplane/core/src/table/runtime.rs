//! The one update path for state learned at run time, not said by the control plane: SSRCs
//! learned from a layer's RID, a WebRTC leg's DTLS keys and ICE consent. None of it moves the
//! generation; every worker applies the same updates (the daemon's bus carries them).

use super::*;

impl Tables {
    /// Records an SSRC learned from the packet path (a layer announced by its RID), with the
    /// receive state of the packet that proved it. Returns its ingress index on the leg. Learned
    /// SSRCs last until the track's spec changes the layer.
    pub fn learn_ssrc(&mut self, leg_id: LegId, track_id: TrackId, layer: u8, rtx: bool, ssrc: Ssrc, recv: RtpRecvState) -> Option<usize> {
        let leg = self.legs.get_mut(&leg_id)?;
        if leg.ingress_index(ssrc).is_some() {
            return None;
        }
        let track = self.tracks.get_mut(&track_id)?;
        let clock_rate = track.spec.clock_rate;
        let state = track.layers.get_mut(usize::from(layer))?;
        if rtx {
            state.rtx_ssrc = Some(ssrc);
        } else {
            state.ssrc = Some(ssrc);
        }
        let level_gate = Ingress::level_gate_of(&track.spec, rtx);
        leg.ingress.push(Ingress { layer, rtx, clock_rate, level_gate, ..Ingress::new(ssrc, track_id, recv) });
        Some(leg.ingress.len() - 1)
    }

    /// Installs the SRTP keys a WebRTC leg's DTLS handshake exported (`rx`: what the participant
    /// sends, `tx`: what we send). Not a delta: the keys are runtime state of the leg (see
    /// [`EdgeState`]), installed by the dataplane's slow path between batches without touching
    /// the control plane's generation.
    pub fn install_edge_keys(&mut self, id: LegId, rx: KeyMaterial, tx: KeyMaterial) -> Result<(), DeltaError> {
        let rx_keys = SrtpKeys::new(rx.profile, &rx.key, &rx.salt).map_err(|_| DeltaError::Invalid {
            op: 0,
            field: "edge.rx",
            why: "key or salt length does not match the profile",
        })?;
        let tx_keys = SrtpKeys::new(tx.profile, &tx.key, &tx.salt).map_err(|_| DeltaError::Invalid {
            op: 0,
            field: "edge.tx",
            why: "key or salt length does not match the profile",
        })?;
        let edge = self.legs.get_mut(&id).ok_or(DeltaError::UnknownLeg { op: 0, leg: id })?.edge.as_mut();
        let edge = edge.ok_or(DeltaError::Invalid { op: 0, field: "leg.edge", why: "not a WebRTC leg" })?;
        edge.keys = Some((rx, tx));
        self.rekey(id, Some(rx_keys), Some(tx_keys));
        Ok(())
    }

    /// Sets a WebRTC leg's ICE consent (RFC 7675): without it nothing is sent to the leg.
    pub fn set_edge_consent(&mut self, id: LegId, consent: bool) {
        if let Some(e) = self.legs.get_mut(&id).and_then(|l| l.edge.as_mut()) {
            e.consent = consent;
        }
    }
}
