/* test_presets.c — the reference's per-dataset settings and class lists. */
#include <string.h>

#include "check.h"
#include "presets.h"
#include "util.h"

TEST(presets_values) {
    const car_preset *v = preset_find("voc");
    REQUIRE(v && v->list);
    CHECK(v->list->n == 20 && !strcmp(v->list->classes[14], "person with clothes,people,human"));
    CHECK_NEAR(v->eta, 0.4, 1e-7);
    CHECK_NEAR(v->theta, 0.6, 1e-7);
    CHECK_NEAR(v->lambda, 0.4, 1e-7);
    CHECK(!strcmp(v->prompts, "circle,blur") && v->templates == 15 && !v->refer);
    CHECK(!strcmp(v->classifier, "ViT-L/14"));
    const car_preset *c = preset_find("coco-object");
    REQUIRE(c && c->list);
    CHECK(c->list->n == 80 && !strcmp(c->list->classes[31], "sknowboard"));
    CHECK(!strcmp(c->list->classes[79], "toothbrush"));
    const car_preset *x = preset_find("context");
    REQUIRE(x && x->list);
    CHECK(x->list->n == 59 && x->list->n_things == 38 && x->list->n_stuff == 21);
    CHECK(!strcmp(x->list->classes[x->list->stuff[0]], "bedclothes"));
    CHECK(!strcmp(x->list->classes[x->list->stuff[20]], "rock"));
    CHECK(!strcmp(x->list->classes[x->list->things[37]], "monitor"));
    CHECK(!strcmp(x->stuff_prompts, "blur,gray") && !strcmp(x->prompts, "blur,circle"));
    const car_preset *a = preset_find("ade150");
    REQUIRE(a && a->list);
    CHECK(a->list->n == 150 && a->list->n_things == 125 && a->list->n_stuff == 25);
    CHECK(!strcmp(a->list->classes[12], "person, individual, someone, somebody, mortal, soul"));
    CHECK(!strcmp(a->list->classes[a->list->stuff[24]], "waterfall, falls"));
    CHECK_NEAR(a->lambda, 0.7, 1e-7);
    /* every class exactly once in things + stuff */
    int seen[150] = {0};
    for (int i = 0; i < a->list->n_things; i++) seen[a->list->things[i]]++;
    for (int i = 0; i < a->list->n_stuff; i++) seen[a->list->stuff[i]]++;
    int ok = 1;
    for (int i = 0; i < 150; i++) ok &= seen[i] == 1;
    CHECK(ok);
    const car_preset *r = preset_find("refcoco+");
    REQUIRE(r);
    CHECK(r->refer && r->templates == 0 && !strcmp(r->classifier, "ViT-B/16") && !r->list);
    CHECK_NEAR(r->eta, 0.2, 1e-7);
    CHECK_NEAR(r->theta, 0.1, 1e-7);
    const car_preset *g = preset_find("gres");
    REQUIRE(g);
    CHECK(g->theta == 0 && !strcmp(g->classifier, "ViT-L/14"));
    CHECK(preset_find("nonsense") == NULL);
    CHECK(!strcmp(CAR_BG_WORDS[22], "bridge") && !strcmp(CAR_TEMPLATES[14], "There is a large {} in the scene."));
}

/* the fixture meta.json holds the reference's VOC queries, bg words and templates */
TEST(presets_match_fixture_meta) {
    const char *mp = shared_path("fixtures/car/chelsea_voc/meta.json");
    if (!mp) SKIP("CaR fixtures missing");
    json *m = json_parse_file(mp);
    REQUIRE(m);
    const car_preset *v = preset_find("voc");
    const json *q = json_get(m, "queries"), *bg = json_get(m, "bg_cls"), *t = json_get(m, "semantic_templates");
    REQUIRE(q && bg && t && q->len == 20 && bg->len == 23 && t->len == 15);
    for (size_t i = 0; i < 20; i++) CHECK(!strcmp(json_at(q, i)->str, v->list->classes[i]));
    for (size_t i = 0; i < 23; i++) CHECK(!strcmp(json_at(bg, i)->str, CAR_BG_WORDS[i]));
    for (size_t i = 0; i < 15; i++) CHECK(!strcmp(json_at(t, i)->str, CAR_TEMPLATES[i]));
    json_free(m);
}

TEST(presets_pc459_ade847) {
    const car_preset *p = preset_find("pc459");
    REQUIRE(p && p->list);
    CHECK(p->list->n == 459 && p->list->n_stuff == 26 && p->list->n_things == 433);
    CHECK(!strcmp(p->list->classes[p->list->stuff[0]], "atrium"));
    CHECK(!strcmp(p->list->classes[p->list->stuff[25]], "wood"));
    CHECK(!strcmp(p->list->classes[458], "wool"));
    CHECK_NEAR(p->eta, 0.4, 1e-7);
    const car_preset *a = preset_find("ade847");
    REQUIRE(a && a->list);
    CHECK(a->list->n == 847 && a->list->n_stuff == 29 && a->list->n_things == 818);
    CHECK(!strcmp(a->list->classes[a->list->stuff[15]], "island"));
    CHECK(!strcmp(a->list->classes[a->list->stuff[28]], "iceberg"));
    CHECK(!strcmp(a->list->classes[846], "adding machine, totalizer, totaliser"));
}
