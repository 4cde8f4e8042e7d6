// Keyboard review: j/k (or arrows) move between items, d / f / u label the selected item and move on,
// n edits its note (Escape returns to the keys; the note is saved with the next label). The reviewer
// name (no-login mode) is remembered in this browser.
(function () {
  "use strict";
  var KEYS = {d: "defect", f: "false_alarm", u: "unsure"};
  var selectedId = null;

  function cards() { return Array.prototype.slice.call(document.querySelectorAll("article.card")); }

  function select(card) {
    if (!card) { return; }
    cards().forEach(function (c) { c.classList.remove("selected"); });
    card.classList.add("selected");
    selectedId = card.id;
    card.focus({preventScroll: true});
    card.scrollIntoView({block: "nearest"});
  }

  function selected() {
    var card = selectedId && document.getElementById(selectedId);
    return card || cards()[0] || null;
  }

  function move(step) {
    var all = cards(), card = selected();
    if (!card) { return; }
    var index = all.indexOf(card);
    if (!card.classList.contains("selected")) { index -= step; }  // first key press selects the top item
    select(all[Math.max(0, Math.min(all.length - 1, index + step))]);
  }

  function label(name) {
    var card = selected();
    if (!card) { return; }
    var all = cards(), next = all[all.indexOf(card) + 1];
    var button = card.querySelector("button[value=" + name + "]");
    if (button) { button.click(); }
    if (next) { select(next); }
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA")) {
      if (event.key === "Escape") { target.blur(); select(target.closest("article.card") || selected()); }
      if (event.key === "Enter" && target.name === "note") { event.preventDefault(); }
      return;
    }
    if (event.key === "j" || event.key === "ArrowDown") { event.preventDefault(); move(1); }
    else if (event.key === "k" || event.key === "ArrowUp") { event.preventDefault(); move(-1); }
    else if (KEYS[event.key]) { event.preventDefault(); label(KEYS[event.key]); }
    else if (event.key === "n") {
      var card = selected();
      if (card) { event.preventDefault(); select(card); card.querySelector("input[name=note]").focus(); }
    }
  });

  document.addEventListener("click", function (event) {
    var card = event.target.closest && event.target.closest("article.card");
    if (card && event.target.tagName !== "BUTTON") { select(card); }
  });

  // the card comes back re-rendered after a review: keep it selected if it was
  document.addEventListener("htmx:afterSwap", function () {
    var card = selectedId && document.getElementById(selectedId);
    if (card) { card.classList.add("selected"); }
  });

  // a refused change (the session ended with a restart, a login expired) or an inspector that does not
  // answer is said on the page, never swallowed
  function notice(text, kind) {
    var box = document.getElementById("notice");
    if (!box) { return; }
    box.textContent = text;
    box.dataset.kind = kind;
    box.hidden = false;
  }
  document.addEventListener("htmx:responseError", function (event) {
    notice((event.detail.xhr.responseText || "refused").trim(), "refused");
  });
  document.addEventListener("htmx:sendError", function () {
    notice("the inspector does not answer (stopped or restarting?); the page retries", "connection");
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var box = document.getElementById("notice");
    if (box && event.detail.successful && box.dataset.kind === "connection") { box.hidden = true; }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var reviewer = document.getElementById("reviewer");
    if (reviewer) {
      reviewer.value = window.localStorage.getItem("qi-reviewer") || reviewer.value;
      reviewer.addEventListener("change", function () { window.localStorage.setItem("qi-reviewer", reviewer.value); });
    }
  });
})();
