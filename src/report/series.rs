//! The drain's timeline in the report, bounded: at most `cap` points, and
//! when full, neighbours merge and the spacing doubles, so that a long drain
//! keeps its whole span at a coarser grain and no arrival is lost.

use super::SamplePoint;

/// A bounded timeline: at most `cap` points; when full, pairs merge.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    cap: usize,
    stride: u32,
    pending: u32,
    pending_arrivals: u32,
    pending_requests: u32,
    pub(crate) every_ms: u64,
    pub(crate) points: Vec<SamplePoint>,
}

impl Series {
    pub(crate) fn new(cap: usize, every_ms: u64) -> Series {
        Series {
            cap: cap.max(2),
            stride: 1,
            pending: 0,
            pending_arrivals: 0,
            pending_requests: 0,
            every_ms,
            points: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, p: SamplePoint) {
        self.pending += 1;
        self.pending_arrivals += p.arrivals;
        self.pending_requests += p.requests;
        if self.pending < self.stride {
            return;
        }
        self.points.push(SamplePoint {
            arrivals: self.pending_arrivals,
            requests: self.pending_requests,
            ..p
        });
        self.pending = 0;
        self.pending_arrivals = 0;
        self.pending_requests = 0;
        if self.points.len() >= self.cap {
            let merged = self
                .points
                .chunks(2)
                .map(|c| {
                    let last = c[c.len() - 1];
                    SamplePoint {
                        arrivals: c.iter().map(|x| x.arrivals).sum(),
                        requests: c.iter().map(|x| x.requests).sum(),
                        ..last
                    }
                })
                .collect();
            self.points = merged;
            self.stride *= 2;
            self.every_ms *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stays_bounded_and_keeps_every_arrival() {
        let mut s = Series::new(8, 50);
        for i in 0..100u64 {
            s.push(SamplePoint {
                t_ms: i * 50,
                arrivals: 1,
                requests: 2,
                open: i as u32,
            });
        }
        assert!(s.points.len() <= 8);
        let kept: u32 = s.points.iter().map(|p| p.arrivals).sum();
        assert!(
            (100 - 16..=100).contains(&kept),
            "at most one stride pending: {kept}"
        );
        let requests: u32 = s.points.iter().map(|p| p.requests).sum();
        assert_eq!(requests, 2 * kept, "requests merge as arrivals do");
        assert!(s.every_ms > 50);
        assert!(s.points.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    }
}
