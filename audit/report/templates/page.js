// The page reads without this script.  It opens the collapsed sections while
// printing, and a table row highlights its layer's points in the same section.
(function () {
  "use strict";
  var opened = [];
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details:not([open])").forEach(function (d) {
      d.open = true;
      opened.push(d);
    });
  });
  window.addEventListener("afterprint", function () {
    opened.forEach(function (d) { d.open = false; });
    opened = [];
  });
  document.querySelectorAll("tr[data-x]").forEach(function (row) {
    var section = row.closest("section");
    var selector = 'circle.pt[data-x="' + CSS.escape(row.getAttribute("data-x")) + '"]';
    function mark(on) {
      section.querySelectorAll(selector).forEach(function (c) { c.classList.toggle("hl", on); });
    }
    row.addEventListener("mouseenter", function () { mark(true); });
    row.addEventListener("mouseleave", function () { mark(false); });
  });
})();
