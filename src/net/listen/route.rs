//! Where new connections go (gate mode, TCP): the receiving color, bgd's
//! readiness probes and `bgctl compare`'s requests by their exact source
//! address, the testers during a preview or a canary, and a canary's share
//! (by client or per connection); all of it one classic BPF program per
//! `SO_REUSEPORT` group ([`crate::net::steer`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::unix::{link_over, public_path};
use super::{Entry, Inner, Listeners, SocketState};
use crate::color::Color;
use crate::config::{ListenAddr, TrafficMode};
use crate::deploy::clients::{CanaryBy, Cidr};
use crate::net::steer::{self, Route};

/// Gate, TCP: traffic by client (issue 23).
#[derive(Debug, Default)]
pub(super) struct Clients {
    /// `[traffic] testers`, as last loaded.
    pub(super) testers: Vec<Cidr>,
    /// `[traffic] canary_by`, as last loaded.
    pub(super) by: CanaryBy,
    /// The color the testers reach now: the new build, during a preview
    /// or a canary; `None`: they go where everyone goes.
    pub(super) tested: Option<Color>,
}

/// Where bgd's readiness probe connects to reach one color through the
/// address clients use.
#[derive(Debug, Clone)]
pub(crate) enum ProbeTarget {
    /// Connect from `from`'s IP (any port) to `to`; the probe's source is
    /// routed to the color with [`Listeners::route_probe`] first.
    Tcp { to: SocketAddr, from: IpAddr },
    /// Connect to the color's own socket file.
    Unix(PathBuf),
    /// Shared mode: the color's private probe socket.
    Own(SocketAddr),
}

/// The address to connect to for a socket bound to `ip`: loopback for an
/// unspecified one.
pub(super) fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// The group index of `color`'s socket in a group whose socket array is
/// `order`; a color not in it yet gets the index it will have when it
/// joins (the next one).
pub(super) fn index_in(order: &[Color], color: Color) -> u32 {
    order
        .iter()
        .position(|c| *c == color)
        .unwrap_or(order.len()) as u32
}

/// Where new connections go, by color; each group's indexes follow.
pub(super) struct ColorRoute {
    to: Color,
    /// bgd's probes and `bgctl compare`'s requests, by exact source.
    probes: Vec<(SocketAddr, Color)>,
    split: Option<(Color, u8)>,
    split_by: CanaryBy,
    /// The testers and the color they reach.
    testers: Option<(Color, Vec<Cidr>)>,
}

impl ColorRoute {
    /// The route in the indexes of a group whose socket array is `order`.
    pub(super) fn indexed(&self, order: &[Color]) -> Route {
        let index = |c: Color| index_in(order, c);
        Route {
            to: index(self.to),
            probes: self
                .probes
                .iter()
                .map(|(from, c)| (*from, index(*c)))
                .collect(),
            split: self.split.map(|(c, percent)| (index(c), percent)),
            split_by: self.split_by,
            testers: (self.testers.as_ref()).map(|(c, cidrs)| (index(*c), cidrs.clone())),
        }
    }
}

impl Inner {
    pub(super) fn color_route(&self) -> ColorRoute {
        ColorRoute {
            to: self.receiving.or(self.first).unwrap_or(Color::Blue),
            probes: self.probes.iter().chain(&self.compares).copied().collect(),
            split: self.canary,
            split_by: self.clients.by,
            testers: (self.clients.tested)
                .filter(|_| !self.clients.testers.is_empty())
                .map(|c| (c, self.clients.testers.clone())),
        }
    }

    /// The route in a group where blue listened first.
    #[cfg(test)]
    pub(super) fn route(&self) -> Route {
        self.color_route().indexed(&[Color::Blue, Color::Green])
    }

    /// Attaches the program for the current route to every TCP group that
    /// listens, in that group's indexes.
    pub(super) fn steer(&self) -> io::Result<()> {
        let route = self.color_route();
        for e in &self.entries {
            if let Entry::Group { blue, green, order } = e {
                let listening = [blue, green]
                    .into_iter()
                    .find(|s| s.state == SocketState::Listening);
                if let Some(s) = listening {
                    steer::attach(s.fd.as_fd(), &steer::program(&route.indexed(order)))?;
                }
            }
        }
        Ok(())
    }
}

impl Listeners {
    /// Steers new public connections to `to`, for good: TCP groups get a
    /// new program (one `setsockopt` each), Unix public paths are linked to
    /// `to`'s socket. Ends any probe route, any canary split and the
    /// testers' route.
    pub(crate) fn steer(&self, to: Color) -> io::Result<()> {
        let mut inner = self.lock();
        inner.receiving = Some(to);
        inner.first = None;
        inner.probes.clear();
        inner.canary = None;
        inner.clients.tested = None;
        // The group as it is now, not as bgd left it: see guard.rs.
        inner.repair(None);
        inner.steer()?;
        for e in &inner.entries {
            if let Entry::Files { blue, green } = e {
                let side = if to == Color::Blue { blue } else { green };
                let public = public_path(&side.socket.config).expect("a Unix entry");
                link_over(&side.private, public)?;
            }
        }
        Ok(())
    }

    /// Gives `canary` `percent` % of new TCP connections at random and the
    /// receiving color the rest (one `setsockopt` per group); 0 ends the
    /// split. Unix sockets cannot be split: the core refuses canaries when
    /// a Unix listener exists.
    pub(crate) fn split(&self, canary: Color, percent: u8) -> io::Result<()> {
        let mut inner = self.lock();
        inner.canary = (percent > 0).then_some((canary, percent.min(99)));
        inner.steer()
    }

    /// Sends the clients in `[traffic] testers` to `color` (a preview's or
    /// a canary's), or, with `None`, where everyone goes.
    pub(crate) fn route_testers(&self, color: Option<Color>) -> io::Result<()> {
        let mut inner = self.lock();
        inner.clients.tested = color;
        inner.steer()
    }

    /// Takes `[traffic] testers` and `canary_by` (at start and on a
    /// reload); a preview or canary that runs gets them at once.
    pub(crate) fn set_clients(&self, testers: Vec<Cidr>, by: CanaryBy) -> io::Result<()> {
        let mut inner = self.lock();
        inner.clients.testers = testers;
        inner.clients.by = by;
        inner.steer()
    }

    /// Sends connections from exactly `from` to `color`, until the guard
    /// is dropped (`bgctl compare`'s requests: drop it once the connection
    /// is made, or given up, which closes its socket). Unlike
    /// [`route_probe`](Self::route_probe) it replaces no other route, so
    /// it runs beside bgd's own checks of the same color.
    pub(crate) fn route_compare(
        &self,
        from: SocketAddr,
        color: Color,
    ) -> io::Result<CompareRoute<'_>> {
        let mut inner = self.lock();
        inner.compares.push((from, color));
        if let Err(e) = inner.steer() {
            inner.compares.retain(|(f, _)| *f != from);
            return Err(e);
        }
        Ok(CompareRoute {
            listeners: self,
            from,
        })
    }

    /// Why new connections cannot be split between the colors here, if
    /// they cannot: shared mode, or a Unix listener.
    pub(crate) fn no_split(&self) -> Option<String> {
        if self.mode == TrafficMode::Shared {
            return Some("traffic.mode is \"shared\" (one socket for both colors)".into());
        }
        let inner = self.lock();
        inner.entries.iter().find_map(|e| match e {
            Entry::Files { .. } => Some(format!(
                "[[listen]] {:?} is a Unix socket, which the kernel cannot split",
                e.config().name
            )),
            _ => None,
        })
    }

    /// The color that receives new public connections (gate mode; `None`
    /// in shared mode, where both colors accept).
    pub(crate) fn receiving(&self) -> Option<Color> {
        if self.mode == TrafficMode::Shared {
            return None;
        }
        let inner = self.lock();
        inner.receiving.or(inner.first)
    }

    /// The color new public connections were steered to for good (a swap,
    /// a restart of the live color, or a pause's hold), not the first
    /// start's exception; `None` in shared mode.
    pub(crate) fn steered(&self) -> Option<Color> {
        if self.mode == TrafficMode::Shared {
            return None;
        }
        self.lock().receiving
    }

    /// Where bgd's readiness probe reaches `color` through the address
    /// clients use: the first TCP entry, else the color's first Unix
    /// socket file. `None` in shared mode, where the probe has its own
    /// socket.
    pub(crate) fn probe_target(&self, color: Color) -> Option<ProbeTarget> {
        if self.mode == TrafficMode::Shared {
            return None;
        }
        let inner = self.lock();
        let tcp = inner
            .entries
            .iter()
            .find_map(|e| match (e, &e.config().address) {
                (Entry::Group { .. }, ListenAddr::Tcp(a)) => Some(*a),
                _ => None,
            });
        if let Some(a) = tcp {
            let ip = loopback_for(a.ip());
            return Some(ProbeTarget::Tcp {
                to: SocketAddr::new(ip, a.port()),
                from: ip,
            });
        }
        inner.entries.iter().find_map(|e| match (e, color) {
            (Entry::Files { blue, .. }, Color::Blue) => {
                Some(ProbeTarget::Unix(blue.private.clone()))
            }
            (Entry::Files { green, .. }, Color::Green) => {
                Some(ProbeTarget::Unix(green.private.clone()))
            }
            _ => None,
        })
    }

    /// Sends connections from exactly `from` to `color` (bgd's probe),
    /// instead of the earlier probe to `color`; every other connection goes
    /// where it went.
    pub(crate) fn route_probe(&self, from: SocketAddr, color: Color) -> io::Result<()> {
        let mut inner = self.lock();
        inner.probes.retain(|(_, c)| *c != color);
        inner.probes.push((from, color));
        inner.steer()
    }

    /// Ends the probe route to `color`.
    pub(crate) fn clear_probe(&self, color: Color) {
        let mut inner = self.lock();
        let before = inner.probes.len();
        inner.probes.retain(|(_, c)| *c != color);
        if inner.probes.len() != before {
            if let Err(e) = inner.steer() {
                tracing::warn!("cannot end the probe route to {color}: {e}");
            }
        }
    }
}

/// A route for one source address, ended on drop
/// ([`Listeners::route_compare`]).
pub(crate) struct CompareRoute<'a> {
    listeners: &'a Listeners,
    from: SocketAddr,
}

impl Drop for CompareRoute<'_> {
    fn drop(&mut self) {
        let mut inner = self.listeners.lock();
        inner.compares.retain(|(f, _)| *f != self.from);
        if let Err(e) = inner.steer() {
            tracing::warn!("cannot end the route of {}: {e}", self.from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        Inner {
            entries: Vec::new(),
            receiving: None,
            first: None,
            probes: Vec::new(),
            canary: None,
            alerted: Vec::new(),
            clients: Clients::default(),
            compares: Vec::new(),
            renewed: 0,
            order_file: None,
            saved: Default::default(),
        }
    }

    #[test]
    fn before_any_color_was_live_the_first_started_receives() {
        let mut i = inner();
        assert_eq!(i.route().to, 0, "nothing started yet: blue's index");
        i.first = Some(Color::Green);
        assert_eq!(i.route().to, 1);
        i.receiving = Some(Color::Blue);
        assert_eq!(i.route().to, 0, "a live color wins over the first");
    }

    #[test]
    fn probes_and_a_canary_ride_on_the_receiving_color() {
        let mut i = inner();
        i.receiving = Some(Color::Blue);
        let probe: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        i.probes.push((probe, Color::Green));
        i.canary = Some((Color::Green, 20));
        let r = i.route();
        assert_eq!(
            (r.to, r.probes, r.split),
            (0, vec![(probe, 1)], Some((1, 20)))
        );
    }

    /// Testers ride with a preview or canary only, and only when there
    /// are some; a compare's source goes after the probes.
    #[test]
    fn testers_and_compares_join_the_route() {
        let mut i = inner();
        i.receiving = Some(Color::Blue);
        let net = Cidr::parse("127.0.0.77").unwrap().0;
        i.clients.testers = vec![net];
        assert_eq!(i.route().testers, None, "no preview: no testers");
        i.clients.tested = Some(Color::Green);
        assert_eq!(i.route().testers, Some((1, vec![net])));
        assert_eq!(i.route().split_by, CanaryBy::Client);
        i.clients.testers.clear();
        assert_eq!(i.route().testers, None, "an empty list costs nothing");
        let probe: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let compare: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        i.probes.push((probe, Color::Green));
        i.compares.push((compare, Color::Blue));
        assert_eq!(i.route().probes, vec![(probe, 1), (compare, 0)]);
    }

    #[test]
    fn an_unspecified_address_is_probed_on_loopback() {
        assert_eq!(
            loopback_for("0.0.0.0".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            loopback_for("::".parse().unwrap()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(loopback_for(ip), ip);
    }
}
