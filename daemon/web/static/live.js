// The inbox, live: a question asked (or redelivered) elsewhere appears without a
// reload, once per question id. The server renders each card (escaped there); this
// only inserts it. With no JavaScript the page still works: reload to see new ones.
(function () {
  "use strict";
  var list = document.getElementById("questions");
  if (!list || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var empty = document.getElementById("empty");
  var seen = new Set();
  list.querySelectorAll("[data-question-id]").forEach(function (card) {
    seen.add(card.dataset.questionId);
  });

  function refreshCount() {
    var open = list.querySelectorAll(".question:not(.resolved)").length;
    if (empty) empty.hidden = open > 0;
    document.title = document.title.replace(/^\(\d+\) /, "");
    if (open > 0) document.title = "(" + open + ") " + document.title;
  }

  function card(id) {
    return document.getElementById("q-" + id);
  }

  function add(id) {
    if (seen.has(id)) return;
    seen.add(id);
    fetch("/fragments/questions/" + encodeURIComponent(id), { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { seen.delete(id); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null || card(id)) return;
        var template = document.createElement("template");
        template.innerHTML = html;
        var element = template.content.firstElementChild;
        if (!element) return;
        element.classList.add("fresh");
        list.appendChild(element);
        refreshCount();
      })
      .catch(function () { seen.delete(id); });
  }

  function settle(id, label) {
    var element = card(id);
    if (!element) return;
    element.classList.add("resolved");
    element.querySelectorAll("button, textarea").forEach(function (b) { b.disabled = true; });
    var form = element.querySelector("form.answer");
    if (form) {
      var note = document.createElement("p");
      note.className = "status";
      note.textContent = label;
      form.replaceWith(note);
    }
    refreshCount();
  }

  var source = new EventSource(list.dataset.events);
  source.onopen = function () {
    status.dataset.live = "on";
    status.textContent = "Oldest first. Live: new questions appear here as they are asked.";
  };
  source.onerror = function () {
    status.dataset.live = "polling";
    status.textContent = "Oldest first. Reconnecting for live updates…";
  };
  source.addEventListener("question", function (event) {
    add(JSON.parse(event.data).questionId);
  });
  source.addEventListener("answered", function (event) {
    settle(JSON.parse(event.data).questionId, "Answered; the supervisor's daemon applies it next.");
  });
  source.addEventListener("resolved", function (event) {
    settle(JSON.parse(event.data).questionId, "Answered and applied.");
  });
  refreshCount();
})();
