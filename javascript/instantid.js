// Hover hints for the InstantID panel. The texts are the settings' own help, which the panel renders as JSON in a
// hidden element (one source of truth); this sets them as titles on the matching components.
onUiLoaded(function () {
    for (const holder of gradioApp().querySelectorAll("[data-instantid-hints]")) {
        const hints = JSON.parse(holder.dataset.instantidHints);
        for (const [elementId, hint] of Object.entries(hints)) {
            const element = gradioApp().getElementById(elementId);
            if (element) element.title = hint;
        }
    }
});
