/* Predict with an mpiml linear model from C, using only the HDF5 C library.
 *
 *   h5cc -o predict examples/c/predict.c -lm
 *   ./predict model.h5 data.h5 [X]      # prints one prediction per row of data.h5:X
 *
 * Reads the datasets documented in docs/model-format.md (format versions 1 to 3):
 * coef (K x d), intercept (K), classes (C) for classifiers, and the optional
 * scaler/offset and scaler/scale (d) that scale each row before the scores; checks the
 * format attributes first. A classifier prints its labels as mpiml's predict gives them:
 * integers as integers, floats with 17 significant digits, booleans as True / False,
 * strings as stored (UTF-8).
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_string_attr(hid_t file, const char *name, char *out, size_t size) {
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    if (attr < 0) return -1;
    hid_t type = H5Aget_type(attr);
    int ok = -1;
    if (H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type));   /* h5py writes UTF-8 strings */
        if (H5Aread(attr, mem, &value) >= 0 && value) {
            strncpy(out, value, size - 1);
            out[size - 1] = '\0';
            H5free_memory(value);
            ok = 0;
        }
        H5Tclose(mem);
    } else {
        size_t n = H5Tget_size(type);
        char *buf = calloc(n + 1, 1);
        if (H5Aread(attr, type, buf) >= 0) {
            strncpy(out, buf, size - 1);
            out[size - 1] = '\0';
            ok = 0;
        }
        free(buf);
    }
    H5Tclose(type);
    H5Aclose(attr);
    return ok;
}

/* Read a whole float64 dataset; dims[0..ndims-1] filled; returns malloc'd data. */
static double *read_doubles(hid_t file, const char *name, hsize_t dims[2], int *ndims) {
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) return NULL;
    hid_t space = H5Dget_space(ds);
    *ndims = H5Sget_simple_extent_ndims(space);
    dims[0] = dims[1] = 1;
    H5Sget_simple_extent_dims(space, dims, NULL);
    size_t n = (size_t)dims[0] * (*ndims == 2 ? (size_t)dims[1] : 1);
    double *data = malloc(n * sizeof(double));
    if (H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        free(data);
        data = NULL;
    }
    H5Sclose(space);
    H5Dclose(ds);
    return data;
}

/* The labels of a 1-D dataset as text, one malloc'd string each (see the header). */
static char *copy_text(const char *s, size_t max) {     /* strndup, in plain C99 */
    size_t n = 0;
    while (n < max && s[n]) n++;
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

static char *int_text(long long v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return copy_text(buf, sizeof buf);
}

static char *float_text(double v) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return copy_text(buf, sizeof buf);
}

static int numeric_labels(hid_t ds, hid_t ftype, char **out, size_t n) {
    int integer = H5Tget_class(ftype) == H5T_INTEGER;
    size_t size = integer ? sizeof(long long) : sizeof(double);
    void *buf = malloc(n * size);
    int ok = buf && H5Dread(ds, integer ? H5T_NATIVE_LLONG : H5T_NATIVE_DOUBLE, H5S_ALL,
                            H5S_ALL, H5P_DEFAULT, buf) >= 0 ? 0 : -1;
    for (size_t i = 0; ok == 0 && i < n; i++)
        out[i] = integer ? int_text(((long long *)buf)[i]) : float_text(((double *)buf)[i]);
    free(buf);
    return ok;
}

/* Booleans are stored as h5py stores them: an enum with members FALSE = 0, TRUE = 1. */
static int enum_labels(hid_t ds, hid_t ftype, char **out, size_t n) {
    hid_t mem = H5Tget_native_type(ftype, H5T_DIR_ASCEND);
    size_t size = H5Tget_size(mem);
    unsigned char *buf = malloc(n * size);
    int ok = buf && H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0 ? 0 : -1;
    for (size_t i = 0; ok == 0 && i < n; i++) {
        char name[256];
        if (H5Tenum_nameof(mem, buf + i * size, name, sizeof name) < 0) ok = -1;
        else out[i] = copy_text(strcmp(name, "TRUE") == 0 ? "True"
                                : strcmp(name, "FALSE") == 0 ? "False" : name, sizeof name);
    }
    free(buf);
    H5Tclose(mem);
    return ok;
}

/* Strings: variable-length (as mpiml writes them) or fixed-length, UTF-8 or ASCII. */
static int string_labels(hid_t ds, hid_t ftype, char **out, size_t n) {
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mem, H5Tget_cset(ftype));
    int ok = -1;
    if (H5Tis_variable_str(ftype) > 0) {
        char **buf = calloc(n, sizeof *buf);
        H5Tset_size(mem, H5T_VARIABLE);
        if (buf && H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0) {
            for (size_t i = 0; i < n; i++) out[i] = copy_text(buf[i] ? buf[i] : "", (size_t)-1);
            hid_t space = H5Dget_space(ds);
#if H5_VERSION_GE(1, 12, 0)
            H5Treclaim(mem, space, H5P_DEFAULT, buf);
#else
            H5Dvlen_reclaim(mem, space, H5P_DEFAULT, buf);
#endif
            H5Sclose(space);
            ok = 0;
        }
        free(buf);
    } else {
        size_t size = H5Tget_size(ftype) + 1;     /* room for the terminating NUL */
        char *buf = malloc(n * size);
        H5Tset_size(mem, size);
        H5Tset_strpad(mem, H5T_STR_NULLTERM);
        if (buf && H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0) {
            for (size_t i = 0; i < n; i++) out[i] = copy_text(buf + i * size, size - 1);
            ok = 0;
        }
        free(buf);
    }
    H5Tclose(mem);
    return ok;
}

static void free_labels(char **labels, size_t n) {
    for (size_t i = 0; labels && i < n; i++) free(labels[i]);
    free(labels);
}

/* Read the 1-D dataset `name` of class labels as text; *count is set; NULL on failure. */
static char **read_labels(hid_t file, const char *name, size_t *count) {
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) return NULL;
    hid_t ftype = H5Dget_type(ds), space = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    char **labels = NULL;
    if (H5Sget_simple_extent_ndims(space) == 1 && n > 0) {
        labels = calloc((size_t)n, sizeof *labels);
        int ok = -1;
        if (labels) switch (H5Tget_class(ftype)) {
        case H5T_INTEGER:
        case H5T_FLOAT: ok = numeric_labels(ds, ftype, labels, (size_t)n); break;
        case H5T_ENUM: ok = enum_labels(ds, ftype, labels, (size_t)n); break;
        case H5T_STRING: ok = string_labels(ds, ftype, labels, (size_t)n); break;
        default: break;
        }
        for (hssize_t i = 0; ok == 0 && i < n; i++)
            if (!labels[i]) ok = -1;                /* out of memory */
        if (ok < 0) {
            free_labels(labels, (size_t)n);
            labels = NULL;
        }
    }
    *count = labels ? (size_t)n : 0;
    H5Sclose(space);
    H5Tclose(ftype);
    H5Dclose(ds);
    return labels;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s model.h5 data.h5 [X]\n", argv[0]);
        return 2;
    }
    const char *xname = argc > 3 ? argv[3] : "X";
    hid_t model = H5Fopen(argv[1], H5F_ACC_RDONLY, H5P_DEFAULT);
    if (model < 0) { fprintf(stderr, "cannot open %s\n", argv[1]); return 1; }
    char format[64] = "", type[64] = "";
    read_string_attr(model, "format", format, sizeof format);
    read_string_attr(model, "model_type", type, sizeof type);
    if (strcmp(format, "mpiml-model") != 0) {
        fprintf(stderr, "%s is not an mpiml model file\n", argv[1]);
        return 1;
    }
    int version = -1;
    hid_t vattr = H5Aopen(model, "format_version", H5P_DEFAULT);
    if (vattr >= 0) {
        H5Aread(vattr, H5T_NATIVE_INT, &version);
        H5Aclose(vattr);
    }
    if (version < 1 || version > 3) {
        fprintf(stderr, "%s has model format version %d; this example reads 1 to 3\n",
                argv[1], version);
        return 1;
    }
    if (strcmp(type, "SGDClassifier") != 0 && strcmp(type, "SGDRegressor") != 0) {
        fprintf(stderr, "this example reads linear models, not %s\n", type);
        return 1;
    }
    hsize_t cd[2] = {0, 0}, bd[2] = {0, 0}, xd[2] = {0, 0};
    int cn = 0, bn = 0, xn = 0;
    double *coef = read_doubles(model, "coef", cd, &cn);
    double *icpt = read_doubles(model, "intercept", bd, &bn);
    char **classes = NULL;
    size_t n_classes = 0;
    int classifier = strcmp(type, "SGDClassifier") == 0;
    if (classifier) classes = read_labels(model, "classes", &n_classes);
    double *offset = NULL, *scale = NULL;
    hsize_t od[2], sd[2];
    int on = 0, sn = 0, scaled = H5Lexists(model, "scaler", H5P_DEFAULT) > 0;
    if (scaled) {
        offset = read_doubles(model, "scaler/offset", od, &on);
        scale = read_doubles(model, "scaler/scale", sd, &sn);
    }
    H5Fclose(model);
    size_t K = cn == 2 ? cd[0] : 1, d = cn == 2 ? cd[1] : cd[0];

    hid_t data = H5Fopen(argv[2], H5F_ACC_RDONLY, H5P_DEFAULT);
    if (data < 0) { fprintf(stderr, "cannot open %s\n", argv[2]); return 1; }
    double *X = read_doubles(data, xname, xd, &xn);
    H5Fclose(data);
    if (!coef || !icpt || !X || (classifier && !classes) || xn != 2 || xd[1] != d ||
        bn != 1 || bd[0] != K || (classifier && n_classes != (K == 1 ? 2 : K))) {
        fprintf(stderr, "unexpected datasets (need coef, intercept%s and a %zu-column %s)\n",
                classifier ? ", classes (1 label per output, 2 for one output)" : "", d, xname);
        return 1;
    }
    if (scaled && (!offset || !scale || on != 1 || sn != 1 || od[0] != d || sd[0] != d)) {
        fprintf(stderr, "the model's scaler/offset and scaler/scale must have %zu values\n", d);
        return 1;
    }
    for (hsize_t i = 0; i < xd[0]; i++) {
        double *x = X + i * d;
        if (scaled)     /* the model's input: z_j = (x_j - offset_j) / scale_j */
            for (size_t j = 0; j < d; j++) x[j] = (x[j] - offset[j]) / scale[j];
        size_t best = 0;
        double best_s = -INFINITY, s0 = 0.0;
        for (size_t k = 0; k < K; k++) {
            double s = icpt[k];
            for (size_t j = 0; j < d; j++) s += coef[k * d + j] * x[j];
            if (k == 0) s0 = s;
            if (s > best_s) { best_s = s; best = k; }
        }
        if (!classifier) printf("%.17g\n", s0);
        else puts(classes[K == 1 ? (s0 > 0 ? 1 : 0) : best]);
    }
    free(coef); free(icpt); free_labels(classes, n_classes); free(X); free(offset); free(scale);
    return 0;
}
