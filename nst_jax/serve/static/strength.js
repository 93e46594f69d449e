// The strength control (docs/serve.md): a radial or linear gradient map of per-pixel style strength, applied by
// the server in the same pass as the style (nst_jax.strength). Self-contained: it only sets
// nst.settings.strength and calls sendSettings() from app.js.
"use strict";

(function () {
  const el = (id) => document.getElementById(id);

  function control() {
    if (el("strength-kind").value === "off") return null;
    return {
      kind: el("strength-kind").value,
      x: Number(el("strength-x").value) / 100,
      y: Number(el("strength-y").value) / 100,
      radius: Number(el("strength-radius").value) / 100,
      angle: Number(el("strength-angle").value),
      softness: Number(el("strength-softness").value) / 100,
      invert: el("strength-invert").checked,
    };
  }

  function update() {
    const c = control();
    el("strength-params").hidden = c === null;
    el("strength-radius-label").hidden = c !== null && c.kind !== "radial";
    el("strength-angle-label").hidden = c !== null && c.kind !== "linear";
    nst.settings.strength = c;
    sendSettings();
  }

  // A click on the output picture moves the gradient's centre there.
  function place(ev) {
    if (el("strength-kind").value === "off") return;
    const r = ev.currentTarget.getBoundingClientRect();
    el("strength-x").value = String(Math.round(100 * (ev.clientX - r.left) / r.width));
    el("strength-y").value = String(Math.round(100 * (ev.clientY - r.top) / r.height));
    update();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!el("strength-kind")) return;
    for (const id of ["strength-kind", "strength-x", "strength-y", "strength-radius", "strength-angle",
                      "strength-softness", "strength-invert"]) {
      el(id).addEventListener("input", update);
    }
    el("output").addEventListener("click", place);
  });
})();
