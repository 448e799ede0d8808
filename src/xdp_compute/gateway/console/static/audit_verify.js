/* The verify page: a chosen checkpoint file is read into the textarea (nothing is uploaded until Verify). */
(function () {
  "use strict";
  var file = document.getElementById("checkpoint-file");
  var text = document.getElementById("checkpoint");
  if (!file || !text) return;
  file.addEventListener("change", function () {
    var f = file.files && file.files[0];
    if (!f) return;
    if (f.size > 16384) { text.value = ""; file.setCustomValidity("a checkpoint is at most 16 KiB"); file.reportValidity(); return; }
    file.setCustomValidity("");
    f.text().then(function (t) { text.value = t; });
  });
})();
