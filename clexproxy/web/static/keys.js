// The keys page's Copy button: copies the new key with navigator.clipboard, or selects it for Ctrl+C.
// Without this script the key is still shown in a read-only field (the button stays hidden).
(function () {
  "use strict";
  function copied(state, text) {
    state.textContent = text;
  }
  document.querySelectorAll("button[data-copy-target]").forEach(function (button) {
    var field = document.getElementById(button.getAttribute("data-copy-target"));
    var state = button.parentElement.querySelector(".copy-state");
    if (!field) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      function fallback() {
        field.focus();
        field.select();
        var ok = false;
        try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
        copied(state, ok ? "Copied" : "Selected: press Ctrl+C (or \u2318C) to copy");
        if (ok) { button.textContent = "Copied"; button.classList.add("done"); }
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () {
          button.textContent = "Copied";
          button.classList.add("done");
          copied(state, "Copied");
        }, fallback);
      } else {
        fallback();
      }
    });
  });
})();
