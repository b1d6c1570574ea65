// cx_status: polls this page's own URL for JSON and redraws the tables in
// place; no reload, no external resources.
(function () {
	"use strict";
	var root = document.getElementById("services");
	var updated = document.getElementById("updated");
	var refresh = parseInt(root.getAttribute("data-refresh-ms"), 10) || 1000;
	var lastOK = 0;
	// csrf is the token for the page's actions, "" when this client may
	// not act; each JSON answer brings a fresh one.
	var csrf = root.getAttribute("data-csrf") || "";

	function el(tag, attrs, children) {
		var e = document.createElement(tag);
		for (var k in attrs || {}) {
			if (k === "text") e.textContent = attrs[k];
			else e.setAttribute(k, attrs[k]);
		}
		(children || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
		return e;
	}

	function duration(s) {
		if (s < 0) s = 0;
		if (s < 10) return s.toFixed(1) + "s";
		if (s < 60) return Math.floor(s) + "s";
		var m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
		if (d > 0) return d + "d " + (h % 24) + "h";
		if (h > 0) return h + "h " + (m % 60) + "m";
		return m + "m " + Math.floor(s % 60) + "s";
	}

	function td(label, cls, children) {
		return el("td", { "data-label": label, "class": cls || "" }, children);
	}

	function conflictRoles(svc) {
		var seen = {}, bad = {};
		svc.instances.forEach(function (i) {
			if (i.state !== "active") return;
			i.leader_roles.forEach(function (r) { if (seen[r]) bad[r] = true; seen[r] = true; });
		});
		return bad;
	}

	// control is the instance's operator hold and, when this client may
	// act, the forms that change it (POST to this page, answered with 303).
	function control(i, svc) {
		var out = [];
		var c = i.control;
		if (c) {
			var when = new Date(c.at).toLocaleString();
			out.push(el("span", {
				"class": "badge control-" + c.state + (c.holds ? "" : " spent"), text: c.state + (c.holds ? "" : " (ended)"),
				title: c.holds ? "held out of routing" : "set for an earlier process of this instance; no longer holds"
			}), " ", el("span", { "class": "control-who", text: "by " + c.by + " via " + c.gateway + ", " + when }));
		}
		if (!csrf) return out.length ? out : ["—"];
		var actions = el("span", { "class": "actions" });
		[["drain", "Drain"], ["maintenance", "Maintenance"], ["ready", "Ready"]].forEach(function (a) {
			if (a[0] === "ready" && !c) return;
			if (c && c.state === a[0] && c.holds) return;
			actions.appendChild(el("form", { method: "post", action: location.pathname + location.search, "data-action": a[0] }, [
				el("input", { type: "hidden", name: "action", value: a[0] }),
				el("input", { type: "hidden", name: "id", value: i.id }),
				el("input", { type: "hidden", name: "service", value: svc.subject_prefix }),
				el("input", { type: "hidden", name: "csrf", value: csrf }),
				el("button", { type: "submit", text: a[1], title: a[1] + " " + i.id + " on every gateway" })
			]));
		});
		if (out.length) out.push(" ");
		out.push(actions);
		return out;
	}

	function row(i, bad, svc) {
		var state = [el("span", { "class": "badge " + i.state, text: i.state })];
		if (i.held) state.push(" ", el("span", { "class": "badge failing", text: "held", title: i.held_until ? "flapping: held out of routing until " + new Date(i.held_until).toLocaleTimeString() : "waiting for enough consecutive heartbeats (rise)" }));
		if (i.failing) state.push(" ", el("span", { "class": "badge failing", text: "failing", title: "failed a request recently; passed over while others are available" }));
		var serving = i.primary ? [el("span", { "class": "badge serving", text: "connected" })] : [];
		var roles = i.leader_roles.map(function (r) {
			return el("span", { "class": "role" + (bad[r] ? " conflict" : ""), text: r, title: bad[r] ? "claimed by more than one active instance" : "" });
		});
		var meta = Object.keys(i.meta).sort().map(function (k) { return k + "=" + i.meta[k]; }).join(", ");
		var age = duration(i.heartbeat_age_seconds) + " ago";
		if (i.state === "stale" || i.state === "left") age += " (" + i.state + " since " + new Date(i.state_since).toLocaleTimeString() + ")";
		return el("tr", {
			"data-id": i.id, "data-state": i.state, "data-primary": String(i.primary),
			"data-control": i.control ? i.control.state : "",
			"class": "state-" + i.state + (i.primary ? " primary" : "")
		}, [
			td("Instance", "id", [el("strong", { text: i.id })]),
			td("State", "state", state),
			td("Serving", "serving", serving),
			td("Version", "", [i.version || "—"]),
			td("Uptime", "", [i.state === "left" ? "—" : duration(i.uptime_seconds)]),
			td("Heartbeat", "age", [age]),
			td("Priority", "", [String(i.priority) + (i.priority !== i.announced_priority ? " (announced " + i.announced_priority + ")" : "")]),
			td("Leader roles", "", roles.length ? roles : ["—"]),
			td("In flight", "", [String(i.requests_in_flight)]),
			td("URL", "", [el("code", { text: i.url })]),
			td("Meta", "meta", [meta || "—"]),
			td("Control", "control", control(i, svc))
		]);
	}

	function sameIDs(a, b) {
		return a.length === b.length && a.slice().sort().join(",") === b.slice().sort().join(",");
	}

	// Gateways: every gateway of the service's fleet, the one that served
	// this page marked; the fleet's warnings are among the service's.
	function gateways(svc) {
		var gws = svc.gateways || [];
		if (!gws.length) return null;
		var self = gws.filter(function (g) { return g.self; })[0];
		if (self) self.primary = self.primary || [];
		var rows = gws.map(function (g) {
			g.primary = g.primary || [];
			var id = [el("strong", { text: g.id })];
			if (g.self) id.push(" ", el("span", { "class": "badge serving", text: "served this page" }));
			var differs = self && !g.self && g.state === "active" && !sameIDs(g.primary, self.primary);
			var nats = (g.nats_connected ? "connected" : "disconnected") + (g.nats_server ? " · " + g.nats_server : "");
			return el("tr", { "data-gateway": g.id, "data-state": g.state, "data-self": String(g.self), "class": "state-" + g.state + (g.self ? " primary" : "") }, [
				td("Gateway", "id", id),
				td("State", "state", [el("span", { "class": "badge " + g.state, text: g.state })]),
				td("Version", "", [g.version || "—"]),
				td("Uptime", "", [g.state === "left" ? "—" : duration(g.uptime_seconds)]),
				td("NATS", "nats", [nats]),
				td("Primary", "", [el("span", { "class": differs ? "differs" : "", title: differs ? "differs from the primary of the gateway that served this page" : "", text: g.primary.length ? g.primary.join(", ") : "none" })]),
				td("In flight", "", [String(g.inflight)]),
				td("Heartbeat", "age", [g.self ? "this gateway" : duration(g.heartbeat_age_seconds) + " ago"])
			]);
		});
		var head = el("tr", {}, ["Gateway", "State", "Version", "Uptime", "NATS", "Primary", "In flight", "Heartbeat"].map(function (h) { return el("th", { text: h }); }));
		return el("div", { "class": "gateways" }, [
			el("h3", { text: "Gateways" }),
			el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])
		]);
	}

	function service(svc) {
		var bad = conflictRoles(svc);
		// state_counts counts every instance, listed or not (the report
		// lists at most its limit).
		var counts = svc.state_counts;
		if (!counts) {
			counts = { active: 0, draining: 0, stale: 0, left: 0 };
			svc.instances.forEach(function (i) { counts[i.state]++; });
		}
		var section = el("section", { "data-service": svc.subject_prefix });
		section.appendChild(el("h2", {}, ["Service ", el("code", { text: svc.subject_prefix })]));
		svc.warnings.forEach(function (w) { section.appendChild(el("p", { "class": "warning", role: "alert", text: "⚠ " + w })); });
		section.appendChild(el("div", { "class": "summary" }, [
			el("span", {}, [el("b", { text: "Connected to: " }), el("span", { "class": "connected-to", text: svc.primary.length ? svc.primary.join(", ") : "none" })]),
			el("span", {}, [el("b", { text: "NATS: " }), svc.nats_connected ? "connected" : "disconnected"]),
			el("span", { text: counts.active + " active · " + counts.draining + " draining · " + counts.stale + " stale · " + counts.left + " left" })
		]));
		var head = el("tr", {}, ["Instance", "State", "Serving", "Version", "Uptime", "Heartbeat", "Priority", "Leader roles", "In flight", "URL", "Meta", "Control"].map(function (h) { return el("th", { text: h }); }));
		var body = el("tbody", {}, svc.instances.map(function (i) { return row(i, bad, svc); }));
		if (!svc.instances.length) body.appendChild(el("tr", {}, [el("td", { colspan: "12", text: "No instance has announced itself yet." })]));
		section.appendChild(el("table", {}, [el("thead", {}, [head]), body]));
		var fleet = gateways(svc);
		if (fleet) section.appendChild(fleet);
		return section;
	}

	function render(report) {
		var frag = document.createDocumentFragment();
		if (!report.services.length) frag.appendChild(el("p", { "class": "warning", text: "No cx service is running in this gateway's configuration." }));
		report.services.forEach(function (s) { frag.appendChild(service(s)); });
		root.replaceChildren(frag);
		root.classList.remove("stale-data");
		lastOK = Date.now();
		updated.textContent = "Live · updated " + new Date(report.generated_at).toLocaleTimeString();
	}

	function poll() {
		fetch(location.pathname + location.search, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
			.then(function (r) {
				if (!r.ok) throw new Error("HTTP " + r.status);
				csrf = r.headers.get("X-Cx-Csrf-Token") || "";
				return r.json();
			})
			.then(render)
			.catch(function (e) {
				root.classList.add("stale-data");
				updated.textContent = "Cannot reach the gateway (" + e.message + ")" + (lastOK ? "; last update " + duration((Date.now() - lastOK) / 1000) + " ago" : "");
			})
			.then(function () { setTimeout(poll, refresh); });
	}
	poll();
})();
